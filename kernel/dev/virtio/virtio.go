// Package virtio is the driver side of virtio 1.x over MMIO (virtio spec
// §4.2.2, register layout "Version 2") with split virtqueues (§2.7): device
// initialisation and feature negotiation (Device), the queue itself (Queue),
// the memory queues and buffers live in (DMA) and the interrupt a driver
// sleeps on (Interrupt). Device drivers (blk, net) sit on top.
//
// Design. Inside a CumulusDB image every register access is a VM exit
// (~50 µs under PVM), while the queues are plain shared memory. So:
// registers are touched to set a device up, to notify it of new requests
// (once per batch, and only when the device asked for it:
// VRING_USED_F_NO_NOTIFY or VIRTIO_F_EVENT_IDX), and to acknowledge an
// interrupt after a driver actually slept; completions are found by polling
// the used ring. Drivers run in the program's own goroutines (the database
// polls its queues itself), never in trap context: this package allocates,
// locks and blocks freely.
//
// Invariants:
//   - Register accesses are real 32-bit (or, for device configuration
//     fields, 8/16-bit) loads and stores of the register window, issued
//     through Transport, one instruction each (mmio_amd64.s).
//   - Queue memory and every buffer handed to a device are guest-physical
//     and contiguous (DMA): in the image, frames through the direct map
//     (address == physical address); in tests a byte slice with a base.
//   - A Queue is the only writer of its descriptor table and avail ring;
//     the device is the only writer of the used ring. Indices are published
//     with 32-bit atomic stores of the ring header word (flags|idx<<16), so
//     everything written before is visible to the device first.
package virtio

import (
	"errors"
	"fmt"
	"syscall"
)

// Transport reaches one device's register window. Offsets are those of
// virtio-mmio (Reg*); device configuration space starts at RegConfig. The
// driver keeps the spec's access widths: 32-bit for the control registers,
// the field's own width for configuration fields.
type Transport interface {
	Read32(off uint32) uint32
	Write32(off uint32, v uint32)
	Read16(off uint32) uint16
	Read8(off uint32) uint8
}

// Doorbell is a Transport that can take a notification that may wait: Ring
// records it in memory the kernel delivers to the device later (in the
// image: at its next exit, see kernel/boot). Ring reports false when it
// cannot, and the caller notifies the usual way.
type Doorbell interface {
	Ring(queue uint16) bool
}

// virtio-mmio registers (spec §4.2.2, Version 2).
const (
	RegMagic             = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100

	MagicValue = 0x74726976 // "virt"
)

// Device status bits (§2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Transport feature bits (§6).
const (
	FIndirectDesc = 1 << 28
	FEventIdx     = 1 << 29
	FVersion1     = 1 << 32
)

// Interrupt status bits.
const (
	IntUsedBuffer   = 1
	IntConfigChange = 2
)

// ErrDevice reports a device that broke the protocol (bad used entry,
// DEVICE_NEEDS_RESET, refused features). It wraps syscall.EIO.
var ErrDevice = fmt.Errorf("virtio: device error: %w", syscall.EIO)

// ErrQueueFull is returned by Queue.Add when too few descriptors are free.
var ErrQueueFull = errors.New("virtio: queue full")

// Device is one virtio device being driven. Its methods run setup; the
// per-request work is on Queue.
type Device struct {
	// AckWakeups writes InterruptACK after each wake-up on the
	// interrupt, for device models that hold an interrupt until it is
	// acknowledged. CumulusDB's monitor raises one per event, so it is
	// off by default.
	AckWakeups bool

	t        Transport
	irq      Interrupt
	id       uint32
	offered  uint64
	features uint64
	queues   []*Queue
}

// Open resets the device behind t, checks that it is a Version 2
// virtio-mmio device with the given device ID, acknowledges it and
// negotiates features: the driver accepts offered & want, and
// VIRTIO_F_VERSION_1 is required. The device is left in FEATURES_OK;
// set up queues with NewQueue, then call Ready. irq may be nil (no sleeping:
// Queue.Wait then polls until its timeout).
func Open(t Transport, irq Interrupt, deviceID uint32, want uint64) (*Device, error) {
	if m := t.Read32(RegMagic); m != MagicValue {
		return nil, fmt.Errorf("virtio: bad magic %#x: %w", m, ErrDevice)
	}
	if v := t.Read32(RegVersion); v != 2 {
		return nil, fmt.Errorf("virtio: mmio version %d (want 2, legacy devices are not supported): %w", v, ErrDevice)
	}
	if id := t.Read32(RegDeviceID); id != deviceID {
		return nil, fmt.Errorf("virtio: device id %d, want %d: %w", id, deviceID, syscall.ENODEV)
	}
	d := &Device{t: t, irq: irq, id: deviceID}
	d.Reset()
	t.Write32(RegStatus, StatusAcknowledge)
	t.Write32(RegStatus, StatusAcknowledge|StatusDriver)
	t.Write32(RegDeviceFeaturesSel, 0)
	lo := t.Read32(RegDeviceFeatures)
	t.Write32(RegDeviceFeaturesSel, 1)
	hi := t.Read32(RegDeviceFeatures)
	d.offered = uint64(hi)<<32 | uint64(lo)
	if d.offered&FVersion1 == 0 {
		d.fail()
		return nil, fmt.Errorf("virtio: device %d does not offer VIRTIO_F_VERSION_1: %w", deviceID, ErrDevice)
	}
	d.features = d.offered & (want | FVersion1)
	t.Write32(RegDriverFeaturesSel, 0)
	t.Write32(RegDriverFeatures, uint32(d.features))
	t.Write32(RegDriverFeaturesSel, 1)
	t.Write32(RegDriverFeatures, uint32(d.features>>32))
	t.Write32(RegStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	if s := t.Read32(RegStatus); s&StatusFeaturesOK == 0 {
		d.fail()
		return nil, fmt.Errorf("virtio: device %d refused features %#x: %w", deviceID, d.features, ErrDevice)
	}
	return d, nil
}

// Features returns the negotiated feature bits.
func (d *Device) Features() uint64 { return d.features }

// Offered returns the feature bits the device offered.
func (d *Device) Offered() uint64 { return d.offered }

// Has reports whether feature bit f was negotiated.
func (d *Device) Has(f uint64) bool { return d.features&f == f }

// Transport returns the device's register window.
func (d *Device) Transport() Transport { return d.t }

// Interrupt returns the device's interrupt (nil if none).
func (d *Device) Interrupt() Interrupt { return d.irq }

// Ready sets DRIVER_OK: the device may now use its queues.
func (d *Device) Ready() error {
	d.t.Write32(RegStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	if s := d.t.Read32(RegStatus); s&(StatusDeviceNeedsReset|StatusFailed) != 0 {
		return fmt.Errorf("virtio: device %d status %#x after DRIVER_OK: %w", d.id, s, ErrDevice)
	}
	return nil
}

// Reset writes 0 to Status and waits until the device reads back 0 (the
// spec's way of knowing the reset is complete). Afterwards the device no
// longer touches its queues, so their memory may be freed.
func (d *Device) Reset() {
	d.t.Write32(RegStatus, 0)
	for i := 0; d.t.Read32(RegStatus) != 0; i++ {
		if i > 1000 {
			break // a device that never completes its reset: nothing more to do
		}
	}
}

// NeedsReset reports whether the device set DEVICE_NEEDS_RESET (one
// register read: call it on errors, not on the hot path).
func (d *Device) NeedsReset() bool {
	return d.t.Read32(RegStatus)&StatusDeviceNeedsReset != 0
}

func (d *Device) fail() {
	d.t.Write32(RegStatus, d.t.Read32(RegStatus)|StatusFailed)
}

// ConfigGeneration reads the configuration generation counter.
func (d *Device) ConfigGeneration() uint32 { return d.t.Read32(RegConfigGeneration) }

// Config64 reads a 64-bit configuration field at off (relative to the
// configuration space) as two 32-bit reads, retried until the generation
// counter shows no change in between (§4.2.2.2).
func (d *Device) Config64(off uint32) uint64 {
	for {
		g := d.ConfigGeneration()
		lo := d.t.Read32(RegConfig + off)
		hi := d.t.Read32(RegConfig + off + 4)
		if d.ConfigGeneration() == g {
			return uint64(hi)<<32 | uint64(lo)
		}
	}
}

// Config32 reads a 32-bit configuration field.
func (d *Device) Config32(off uint32) uint32 { return d.t.Read32(RegConfig + off) }

// Config16 reads a 16-bit configuration field.
func (d *Device) Config16(off uint32) uint16 { return d.t.Read16(RegConfig + off) }

// Config8 reads an 8-bit configuration field.
func (d *Device) Config8(off uint32) uint8 { return d.t.Read8(RegConfig + off) }

// AckInterrupt acknowledges used-buffer and configuration interrupts. One
// register write: drivers call it only after they slept on the interrupt,
// so a device model that waits for the acknowledgement before raising
// the next one keeps raising them.
func (d *Device) AckInterrupt() {
	d.t.Write32(RegInterruptACK, IntUsedBuffer|IntConfigChange)
}

// Close resets the device and frees its queues' memory.
func (d *Device) Close() error {
	d.Reset()
	var first error
	for _, q := range d.queues {
		if err := q.free(); err != nil && first == nil {
			first = err
		}
	}
	d.queues = nil
	return first
}
