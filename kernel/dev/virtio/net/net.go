// Package net is the core of a virtio-net driver (virtio spec §5.1): one
// receive and one transmit queue, the MAC address from the device's
// configuration, Ethernet frames in and out. It is the link layer under
// the network service (gVisor's stack); it knows nothing about IP.
//
// Design. Every buffer is a fixed-size slot (the device's MTU plus the
// Ethernet and virtio headers, at least 2 KiB) of DMA regions per
// direction: a 12-byte virtio_net_hdr_v1 (VIRTIO_F_VERSION_1, no
// offloads negotiated, so the header is all zeroes on transmit and ignored
// on receive) followed by the frame. DMA regions are at most 2 MiB, so
// large slots (the monitor's link has a 64 KiB MTU: fewer frames per
// byte) span several regions, and the rings are shorter (ringBytes per
// direction by default). Receive slots are all posted at Open
// and re-posted as soon as their frame has been handed to the caller, so
// the device always has buffers; transmit slots are taken from a free list
// and come back when the device reports them used (reaped at the next
// Send). Send copies frames into slots and notifies once per batch, and
// only if the device asked; Receive polls the used ring and calls back
// per frame, then notifies once if the device asked for buffers. Wait
// polls, then sleeps on the device's interrupt (futex in the image).
//
// Invariants: a receive slot is owned by the device unless Receive is
// handing it to the callback; a transmit slot is on the free list iff the
// device does not hold it. Frames are at most MTU+14 bytes (no VLAN tag
// room beyond that, no GSO).
//
// Context: program goroutines (the network service), never trap context.
// Send and Receive are each serialised by their own mutex and may run
// concurrently with each other.
package net

import (
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
)

// DeviceID is virtio-net's device ID.
const DeviceID = 1

// Feature bits (§5.1.3).
const (
	FCsum      = 1 << 0 // the device takes frames with partial or no checksum
	FGuestCsum = 1 << 1 // the driver takes frames with partial or no checksum
	FMTU       = 1 << 3
	FMAC       = 1 << 5
	FStatus    = 1 << 16
)

// HeaderSize is the size of virtio_net_hdr_v1 (with num_buffers).
const HeaderSize = 12

// minSlot is the smallest buffer: header + the largest frame at MTU 1500
// (1514), rounded up. Buffers grow with the device's MTU.
const minSlot = 2048

// maxSlot bounds the MTU the driver accepts: 64 KiB buffers.
const maxSlot = 64 << 10

// ringBytes is the buffer memory per direction the default queue size
// allows (queues of 2 KiB slots stay at 256 entries).
const ringBytes = 4 << 20

// dmaChunk is the largest contiguous DMA region (virtio.Direct).
const dmaChunk = 2 << 20

// slab is n fixed-size slots over as many DMA regions as it takes.
type slab struct {
	regions []virtio.Region
	slot    int // bytes per slot (a divisor of dmaChunk, or less than it)
	per     int // slots per region
}

func newSlab(dma virtio.DMA, n, slot int) (*slab, error) {
	per := max(1, dmaChunk/slot)
	s := &slab{slot: slot, per: per}
	for n > 0 {
		k := min(n, per)
		r, err := dma.Alloc(k * slot)
		if err != nil {
			s.free(dma)
			return nil, err
		}
		s.regions = append(s.regions, r)
		n -= k
	}
	return s, nil
}

// buf returns slot i's memory and its physical address.
func (s *slab) buf(i int) ([]byte, uint64) {
	r := &s.regions[i/s.per]
	off := (i % s.per) * s.slot
	return r.Buf[off : off+s.slot], r.Phys + uint64(off)
}

func (s *slab) free(dma virtio.DMA) {
	for _, r := range s.regions {
		dma.Free(r)
	}
	s.regions = nil
}

const (
	rxQueue = 0
	txQueue = 1

	cfgMAC    = 0
	cfgStatus = 6
	cfgMTU    = 10

	statusLinkUp = 1
)

// Config tunes Open; zero values take defaults.
type Config struct {
	// QueueSize is the number of descriptors per queue (default: the
	// device's maximum, capped at 256 and at ringBytes of buffers).
	QueueSize int
	// LazyTx lets Send ring the transport's doorbell instead of
	// notifying (virtio.Queue.Lazy): transmitted frames then reach the
	// device when the kernel next exits, and a full ring is notified at
	// once.
	LazyTx bool
}

// Device is an open virtio-net device.
type Device struct {
	vd   *virtio.Device
	rx   *virtio.Queue
	tx   *virtio.Queue
	dma  virtio.DMA
	mac  [6]byte
	mtu  int
	slot int // bytes per buffer

	rxMu   sync.Mutex
	rxMem  *slab
	rxUsed []virtio.Used

	txMu   sync.Mutex
	txMem  *slab
	txFree []uint16
	txUsed []virtio.Used

	closeMu sync.Mutex
	closed  bool
}

// Open initialises the virtio-net device behind t: reset, features (MAC,
// STATUS, MTU, EVENT_IDX; no offloads), the receive queue filled with
// buffers, the transmit queue, DRIVER_OK.
func Open(t virtio.Transport, irq virtio.Interrupt, dma virtio.DMA, cfg Config) (*Device, error) {
	vd, err := virtio.Open(t, irq, DeviceID, FMAC|FStatus|FMTU|FCsum|FGuestCsum|virtio.FEventIdx)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	d := &Device{vd: vd, dma: dma, mtu: 1500, slot: minSlot}
	if vd.Has(FMAC) {
		for i := range d.mac {
			d.mac[i] = vd.Config8(cfgMAC + uint32(i))
		}
	} else {
		// No MAC from the device: a locally administered one.
		d.mac = [6]byte{0x02, 0x43, 0x55, 0x4d, 0x00, 0x01}
	}
	if vd.Has(FMTU) {
		if m := int(vd.Config16(cfgMTU)); m >= 68 && m <= maxSlot-HeaderSize-14 {
			d.mtu = m
			d.slot = max(minSlot, (HeaderSize+14+m+63)&^63)
		}
	}
	qsize := cfg.QueueSize
	if qsize <= 0 {
		qsize = min(256, max(8, ringBytes/d.slot))
	}
	fail := func(err error) (*Device, error) {
		d.free()
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	if d.rx, err = virtio.NewQueue(vd, rxQueue, qsize, dma); err != nil {
		return fail(err)
	}
	if d.tx, err = virtio.NewQueue(vd, txQueue, qsize, dma); err != nil {
		return fail(err)
	}
	d.tx.Lazy = cfg.LazyTx
	if d.rxMem, err = newSlab(dma, d.rx.Size(), d.slot); err != nil {
		return fail(err)
	}
	if d.txMem, err = newSlab(dma, d.tx.Size(), d.slot); err != nil {
		return fail(err)
	}
	for i := 0; i < d.rx.Size(); i++ {
		if err := d.postRx(uint16(i)); err != nil {
			return fail(err)
		}
	}
	d.txFree = make([]uint16, d.tx.Size())
	for i := range d.txFree {
		d.txFree[i] = uint16(len(d.txFree) - 1 - i)
	}
	d.rxUsed = make([]virtio.Used, d.rx.Size())
	d.txUsed = make([]virtio.Used, d.tx.Size())
	if err := vd.Ready(); err != nil {
		return fail(err)
	}
	d.rx.Kick() // the device may now use the posted buffers
	return d, nil
}

func (d *Device) free() {
	d.vd.Close() // reset first: the device stops touching memory
	if d.rxMem != nil {
		d.rxMem.free(d.dma)
		d.rxMem = nil
	}
	if d.txMem != nil {
		d.txMem.free(d.dma)
		d.txMem = nil
	}
}

// postRx gives receive slot i to the device (not yet published).
func (d *Device) postRx(i uint16) error {
	_, phys := d.rxMem.buf(int(i))
	return d.rx.Add([]virtio.Buffer{{Addr: phys, Len: uint32(d.slot), DeviceWrites: true}}, uint64(i))
}

// ChecksumOffload reports what the device and driver agreed on
// checksums: tx, frames may be sent without transport checksums
// (VIRTIO_NET_F_CSUM: the device's side completes or ignores them); rx,
// received frames may come without them and must not be verified
// (VIRTIO_NET_F_GUEST_CSUM). The caller's stack applies both; the
// driver itself neither computes nor checks checksums.
func (d *Device) ChecksumOffload() (tx, rx bool) { return d.vd.Has(FCsum), d.vd.Has(FGuestCsum) }

// MAC returns the device's Ethernet address.
func (d *Device) MAC() [6]byte { return d.mac }

// MTU returns the largest IP packet a frame may carry (frames are at
// most MTU+14 bytes).
func (d *Device) MTU() int { return d.mtu }

// MaxFrame is the largest frame Send accepts and Receive delivers.
func (d *Device) MaxFrame() int { return d.mtu + 14 }

// LinkUp reports the link status (VIRTIO_NET_F_STATUS; without it the
// link is always up). A register read: a VM exit in the image.
func (d *Device) LinkUp() bool {
	if !d.vd.Has(FStatus) {
		return true
	}
	return d.vd.Config16(cfgStatus)&statusLinkUp != 0
}

// Send queues Ethernet frames (destination MAC first, no FCS) for
// transmission: it copies them into transmit buffers, so the caller may
// reuse them at once, and notifies the device once for the batch (with
// LazyTx, rings its doorbell). It returns how many it took, a prefix of
// frames: fewer with a nil error means the transmit ring is full (call
// again later: completions are reaped by Send itself). With LazyTx a full
// ring is first notified at once, so that a device that has not heard
// the doorbell yet frees it. A frame longer than MaxFrame, or shorter
// than an Ethernet header, stops the batch with an error wrapping EINVAL.
func (d *Device) Send(frames [][]byte) (int, error) {
	n, err := d.send(frames)
	if n < len(frames) && err == nil && d.tx.Lazy {
		d.tx.Notify()
		var m int
		m, err = d.send(frames[n:])
		n += m
	}
	return n, err
}

func (d *Device) send(frames [][]byte) (int, error) {
	d.txMu.Lock()
	if d.isClosed() {
		d.txMu.Unlock()
		return 0, fmt.Errorf("virtio-net: send: %w", syscall.EBADF)
	}
	if err := d.reapTx(); err != nil {
		d.txMu.Unlock()
		return 0, err
	}
	n := 0
	var err error
	for _, f := range frames {
		if len(f) < 14 || len(f) > d.MaxFrame() {
			err = fmt.Errorf("virtio-net: send: frame of %d bytes (14–%d): %w", len(f), d.MaxFrame(), syscall.EINVAL)
			break
		}
		if len(d.txFree) == 0 {
			break
		}
		s := d.txFree[len(d.txFree)-1]
		buf, phys := d.txMem.buf(int(s))
		clear(buf[:HeaderSize]) // flags 0, gso_type NONE, no checksum offload
		copy(buf[HeaderSize:], f)
		if e := d.tx.Add([]virtio.Buffer{{Addr: phys, Len: uint32(HeaderSize + len(f))}}, uint64(s)); e != nil {
			break // ErrQueueFull cannot happen (one descriptor per slot); a broken queue shows in reapTx next time
		}
		d.txFree = d.txFree[:len(d.txFree)-1]
		n++
	}
	d.txMu.Unlock()
	d.tx.Kick()
	return n, err
}

// reapTx returns completed transmit slots to the free list. txMu held.
func (d *Device) reapTx() error {
	for d.tx.Pending() {
		k, err := d.tx.Reap(d.txUsed)
		for _, u := range d.txUsed[:k] {
			d.txFree = append(d.txFree, uint16(u.Token))
		}
		if err != nil {
			return fmt.Errorf("virtio-net: transmit: %w", err)
		}
	}
	return nil
}

// TxFree returns how many frames Send can take now (reaping completed
// transmissions first).
func (d *Device) TxFree() int {
	d.txMu.Lock()
	defer d.txMu.Unlock()
	d.reapTx()
	return len(d.txFree)
}

// Receive calls fn for each frame received so far, in order, and returns
// how many. frame (Ethernet header first, no FCS) is only valid during
// the call: copy what you keep. The buffers go back to the device after
// the batch, with one notification if the device asked for buffers. fn
// must not call Receive.
func (d *Device) Receive(fn func(frame []byte)) (int, error) {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	if d.isClosed() {
		return 0, fmt.Errorf("virtio-net: receive: %w", syscall.EBADF)
	}
	total := 0
	for d.rx.Pending() {
		k, err := d.rx.Reap(d.rxUsed)
		for _, u := range d.rxUsed[:k] {
			s := uint16(u.Token)
			if u.Len > HeaderSize && int(u.Len) <= d.slot {
				buf, _ := d.rxMem.buf(int(s))
				fn(buf[HeaderSize:u.Len])
				total++
			} // else: a runt (header only or bad length): dropped
			if e := d.postRx(s); e != nil && err == nil {
				err = e
			}
		}
		d.rx.Kick()
		if err != nil {
			return total, fmt.Errorf("virtio-net: receive: %w", err)
		}
	}
	return total, nil
}

// Pending reports whether Receive would deliver something (one load).
func (d *Device) Pending() bool { return d.rx.Pending() }

// Wait blocks until a frame has arrived or timeout passes (<0: none),
// polling first and then sleeping on the device's interrupt. It reports
// whether a frame is there.
func (d *Device) Wait(timeout time.Duration) bool { return d.rx.Wait(timeout) }

// ArmReceive turns receive interrupts on until DisarmReceive, for a
// caller that sleeps on the interrupt itself (see virtio.Queue.Arm).
func (d *Device) ArmReceive() { d.rx.Arm() }

// DisarmReceive undoes ArmReceive.
func (d *Device) DisarmReceive() { d.rx.Disarm() }

// SetSpinTime sets how long Wait polls before it sleeps.
func (d *Device) SetSpinTime(t time.Duration) { d.rx.SpinTime = t }

// Stats returns the receive and transmit queues' counters.
func (d *Device) Stats() (rx, tx virtio.QueueStats) { return d.rx.Stats(), d.tx.Stats() }

func (d *Device) isClosed() bool {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	return d.closed
}

// Close resets the device and frees its memory.
func (d *Device) Close() error {
	d.closeMu.Lock()
	if d.closed {
		d.closeMu.Unlock()
		return nil
	}
	d.closed = true
	d.closeMu.Unlock()
	d.rxMu.Lock()
	d.txMu.Lock()
	defer d.rxMu.Unlock()
	defer d.txMu.Unlock()
	d.free()
	return nil
}
