// Package virtio is the device side of virtio 1.x over MMIO with split
// virtqueues (OASIS virtio v1.2: §2 basic facilities, §4.2 MMIO
// transport). It is pure Go over a byte-slice view of guest memory, so
// device models are tested without KVM.
//
// Design: a Transport is the register window of one device. Register
// accesses arrive on vCPU threads (each one a VM exit, so drivers make
// few); the device model (Device) does its work on its own goroutines,
// started when the driver sets DRIVER_OK and stopped — waited for — on
// reset and on Close, so no goroutine touches guest memory after either.
// Interrupts set a bit in InterruptStatus and call the irq callback (the
// monitor's raiseIRQ). A guest that misprograms the device gets
// DEVICE_NEEDS_RESET (and a configuration-change interrupt), never a
// crash of the monitor.
package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Device is a device model behind a Transport.
type Device interface {
	// ID is the virtio device ID (1 net, 2 block).
	ID() uint32
	// Features are the device-specific feature bits offered. The
	// transport adds VIRTIO_F_VERSION_1 and VIRTIO_RING_F_EVENT_IDX.
	Features() uint64
	// QueueMax is the maximum size of each of the device's queues.
	QueueMax() []uint16
	// ReadConfig and WriteConfig access the device configuration space
	// (off from its start). They may run on any vCPU thread.
	ReadConfig(off uint64, data []byte)
	WriteConfig(off uint64, data []byte)
	// Start is called when the driver sets DRIVER_OK, with the negotiated
	// features and the queues (nil where the driver left one not ready).
	// The device starts its goroutines; they must return when Stop runs.
	Start(features uint64, qs []*Queue) error
	// Stop stops the goroutines Start started and waits for them.
	// Afterwards the device touches no guest memory. It may be called
	// when the device is not started.
	Stop()
	// Close releases host resources (flushing what must be durable).
	Close() error
}

// Counters are optional device statistics.
type Counters interface {
	Counters() Stats
}

// Stats are a device's counts.
type Stats struct {
	Requests   uint64 `json:",omitempty"` // block requests, or frames both ways
	ReadBytes  uint64 `json:",omitempty"` // block: read from the disk; net: received by the guest
	WriteBytes uint64 `json:",omitempty"` // block: written to the disk; net: sent by the guest
	Flushes    uint64 `json:",omitempty"`
	Errors     uint64 `json:",omitempty"` // requests failed (malformed, I/O errors)
	Drops      uint64 `json:",omitempty"` // frames dropped (no buffer, malformed)
	Notifies   uint64 // driver notifications (QueueNotify writes: VM exits)
	Interrupts uint64 // interrupts raised
}

// Transport is one virtio-mmio register window.
type Transport struct {
	dev   Device
	mem   Memory
	irq   func()
	log   *slog.Logger
	kicks []chan struct{}

	mu          sync.Mutex
	devFeatSel  uint32
	drvFeatSel  uint32
	drvFeatures uint64
	queueSel    uint32
	status      uint32
	queues      []QueueConfig
	ready       []bool
	started     bool
	closed      bool

	intStatus  atomic.Uint32
	needsReset atomic.Bool
	notifies   atomic.Uint64
	interrupts atomic.Uint64
	poll       atomic.Int64 // SetPoll
}

// SetPoll overrides the queues' polling time (DefaultPoll) from the next
// start on; negative: no polling.
func (t *Transport) SetPoll(d time.Duration) { t.poll.Store(int64(d)) }

// NewTransport makes the register window of dev over guest memory mem;
// irq raises the device's interrupt in the guest.
func NewTransport(dev Device, mem Memory, irq func(), log *slog.Logger) *Transport {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := len(dev.QueueMax())
	t := &Transport{dev: dev, mem: mem, irq: irq, log: log, queues: make([]QueueConfig, n), ready: make([]bool, n)}
	for range n {
		t.kicks = append(t.kicks, make(chan struct{}, 1))
	}
	return t
}

// Device is the device model behind the window.
func (t *Transport) Device() Device { return t.dev }

// Features is everything the device offers.
func (t *Transport) Features() uint64 { return t.dev.Features() | FVersion1 | FRingEventIdx }

// Stats returns the device's counts.
func (t *Transport) Stats() Stats {
	var s Stats
	if c, ok := t.dev.(Counters); ok {
		s = c.Counters()
	}
	s.Notifies = t.notifies.Load()
	s.Interrupts = t.interrupts.Load()
	return s
}

// MMIORead handles a register read of len(data) bytes at off.
func (t *Transport) MMIORead(off uint64, data []byte) {
	clear(data)
	if off >= RegConfig {
		t.dev.ReadConfig(off-RegConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return // registers are 32 bits wide (§4.2.2)
	}
	binary.LittleEndian.PutUint32(data, t.readReg(off))
}

func (t *Transport) readReg(off uint64) uint32 {
	switch off {
	case RegMagicValue:
		return MagicValue
	case RegVersion:
		return Version
	case RegDeviceID:
		return t.dev.ID()
	case RegVendorID:
		return VendorID
	case RegInterruptStatus:
		return t.intStatus.Load()
	case RegConfigGeneration:
		return 0 // the configuration of our devices never changes
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch off {
	case RegDeviceFeatures:
		if t.devFeatSel < 2 {
			return uint32(t.Features() >> (32 * t.devFeatSel))
		}
	case RegQueueNumMax:
		if q := int(t.queueSel); q < len(t.queues) {
			return uint32(t.dev.QueueMax()[q])
		}
	case RegQueueReady:
		if q := int(t.queueSel); q < len(t.queues) && t.ready[q] {
			return 1
		}
	case RegStatus:
		s := t.status
		if t.needsReset.Load() {
			s |= StatusDeviceNeedsReset
		}
		return s
	case RegQueueNum:
		if q := int(t.queueSel); q < len(t.queues) {
			return uint32(t.queues[q].Size)
		}
	case RegQueueDescLow, RegQueueDescHigh, RegQueueDriverLow, RegQueueDriverHigh, RegQueueDeviceLow, RegQueueDeviceHigh:
		if q := int(t.queueSel); q < len(t.queues) {
			p := t.queueAddr(q, off)
			if off%8 == 4 {
				return uint32(*p >> 32)
			}
			return uint32(*p)
		}
	}
	return 0
}

func (t *Transport) queueAddr(q int, off uint64) *uint64 {
	switch off &^ 7 {
	case RegQueueDescLow:
		return &t.queues[q].Desc
	case RegQueueDriverLow:
		return &t.queues[q].Driver
	default:
		return &t.queues[q].Device
	}
}

// MMIOWrite handles a register write of len(data) bytes at off.
func (t *Transport) MMIOWrite(off uint64, data []byte) {
	if off >= RegConfig {
		t.dev.WriteConfig(off-RegConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	switch off {
	case RegQueueNotify:
		// The value is the queue index (no VIRTIO_F_NOTIFICATION_DATA).
		t.Notify(v)
		return
	case RegInterruptACK:
		t.intStatus.And(^v)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	q := int(t.queueSel)
	setupQueue := q < len(t.queues) && !t.ready[q] && t.status&StatusDriverOK == 0
	switch off {
	case RegDeviceFeaturesSel:
		t.devFeatSel = v
	case RegDriverFeaturesSel:
		t.drvFeatSel = v
	case RegDriverFeatures:
		if t.drvFeatSel < 2 && t.status&StatusFeaturesOK == 0 {
			sh := 32 * t.drvFeatSel
			t.drvFeatures = t.drvFeatures&^(0xffffffff<<sh) | uint64(v)<<sh
		}
	case RegQueueSel:
		t.queueSel = v
	case RegQueueNum:
		if setupQueue {
			t.queues[q].Size = uint16(min(v, 0xffff))
			if v > 0xffff {
				t.queues[q].Size = 0 // refused at QueueReady
			}
		}
	case RegQueueDescLow, RegQueueDescHigh, RegQueueDriverLow, RegQueueDriverHigh, RegQueueDeviceLow, RegQueueDeviceHigh:
		if setupQueue {
			p := t.queueAddr(q, off)
			if off%8 == 4 {
				*p = *p&0xffffffff | uint64(v)<<32
			} else {
				*p = *p&^0xffffffff | uint64(v)
			}
		}
	case RegQueueReady:
		if q >= len(t.queues) || t.status&StatusDriverOK != 0 {
			return
		}
		if v == 0 {
			t.ready[q] = false
			return
		}
		if err := t.queues[q].Validate(t.mem, t.dev.QueueMax()[q]); err != nil {
			// Ready reads back 0: the driver sees the queue refused.
			t.log.Warn("virtio: queue refused", "device", t.dev.ID(), "queue", q, "err", err)
			return
		}
		t.ready[q] = true
	case RegStatus:
		t.setStatus(v)
	}
}

// InlineNotifier is a device that serves some queues' notifications on
// the notifying vCPU's thread, while it is out of the guest anyway,
// instead of waking a goroutine of its own (a host thread hand-off on
// the request's path). NotifyInline reports whether it took queue q's
// notification; it must not block for long and must be safe against
// Start and Stop.
type InlineNotifier interface {
	NotifyInline(q int) bool
}

// Notify delivers a driver notification for queue q: a QueueNotify
// write, or the same request made through the monitor's cheaper paths
// (a notification hypercall, a doorbell). Hot path: no lock.
func (t *Transport) Notify(q uint32) {
	t.notifies.Add(1)
	if n, ok := t.dev.(InlineNotifier); ok && n.NotifyInline(int(q)) {
		return
	}
	if int(q) < len(t.kicks) {
		select {
		case t.kicks[q] <- struct{}{}:
		default:
		}
	}
}

// setStatus runs under mu.
func (t *Transport) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	v &^= StatusDeviceNeedsReset // the device's bit
	if v&StatusFeaturesOK != 0 && t.status&StatusFeaturesOK == 0 {
		// Negotiation (§3.1.1): FEATURES_OK sticks only if the driver
		// accepted a subset of ours including VERSION_1 (no legacy).
		if f := t.drvFeatures; f&^t.Features() != 0 || f&FVersion1 == 0 {
			t.log.Warn("virtio: feature negotiation failed", "device", t.dev.ID(), "driver", fmt.Sprintf("%#x", f), "device_offers", fmt.Sprintf("%#x", t.Features()))
			v &^= StatusFeaturesOK
		}
	}
	if v&StatusDriverOK != 0 && t.status&StatusDriverOK == 0 && !t.started {
		if v&StatusFeaturesOK == 0 {
			v &^= StatusDriverOK
		} else if err := t.start(); err != nil {
			t.log.Warn("virtio: device start failed", "device", t.dev.ID(), "err", err)
			t.markBroken()
		}
	}
	if v&StatusFailed != 0 && t.started {
		t.dev.Stop()
		t.started = false
	}
	t.status = v
}

func (t *Transport) start() error {
	if t.closed {
		return errors.New("virtio: device closed")
	}
	eventIdx := t.drvFeatures&FRingEventIdx != 0
	qs := make([]*Queue, len(t.queues))
	poll := time.Duration(t.poll.Load())
	for i, qc := range t.queues {
		if !t.ready[i] {
			continue
		}
		// A pending notification from before the start means nothing.
		select {
		case <-t.kicks[i]:
		default:
		}
		q, err := NewQueue(i, t.mem, qc, eventIdx, t.kicks[i], t.usedInterrupt, t.broken)
		if err != nil {
			return err
		}
		if poll != 0 {
			q.Poll = max(poll, 0)
		}
		qs[i] = q
	}
	if err := t.dev.Start(t.drvFeatures, qs); err != nil {
		return fmt.Errorf("virtio: start device %d: %w", t.dev.ID(), err)
	}
	t.started = true
	return nil
}

// reset returns the device to its initial state (§2.4), after stopping
// the device model so that nothing writes the rings any more.
func (t *Transport) reset() {
	if t.started {
		t.dev.Stop()
		t.started = false
	}
	t.devFeatSel, t.drvFeatSel, t.drvFeatures, t.queueSel, t.status = 0, 0, 0, 0, 0
	clear(t.queues)
	clear(t.ready)
	t.intStatus.Store(0)
	t.needsReset.Store(false)
}

func (t *Transport) usedInterrupt() {
	t.intStatus.Or(InterruptUsedBuffer)
	t.interrupts.Add(1)
	if t.irq != nil {
		t.irq()
	}
}

// broken is called by a queue (on the device's goroutine) that met rings
// it cannot trust.
func (t *Transport) broken(err error) {
	t.log.Warn("virtio: device needs reset", "device", t.dev.ID(), "err", err)
	t.markBroken()
}

func (t *Transport) markBroken() {
	t.needsReset.Store(true)
	t.intStatus.Or(InterruptConfigChange)
	t.interrupts.Add(1)
	if t.irq != nil {
		t.irq()
	}
}

// Close stops the device and releases its resources. Later calls do
// nothing.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.started {
		t.dev.Stop()
		t.started = false
	}
	return t.dev.Close()
}

// ReadConfigBytes serves a configuration read from a device's
// configuration structure cfg; bytes beyond it read as zero.
func ReadConfigBytes(cfg []byte, off uint64, data []byte) {
	clear(data)
	if off < uint64(len(cfg)) {
		copy(data, cfg[off:])
	}
}
