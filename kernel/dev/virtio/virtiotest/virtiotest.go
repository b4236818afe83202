// Package virtiotest is a fake virtio-mmio device for testing drivers on
// Linux: register semantics of virtio-mmio Version 2 (status, feature
// negotiation, queue setup, notify, interrupt acknowledge) over a
// virtio.SimMem standing in for guest-physical memory, and the device side
// of split virtqueues (pop available chains, push used ones, interrupt and
// notification suppression, EVENT_IDX). Device behaviour (what a request
// means) is the test's: it pops chains and pushes completions, either in
// the notifying goroutine (OnNotify) or from its own goroutines.
//
// This is test support code: it allocates, locks and panics freely. It
// reads the driver's rings the way a monitor would: ring words with 32-bit
// atomics, descriptors and buffers after an acquiring load of avail idx.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
)

// IRQ is a simulated interrupt counter (what BootInfo.IRQCount is in the
// image); Raise bumps it and wakes waiters.
type IRQ struct {
	count atomic.Uint32
	mu    sync.Mutex
	ch    chan struct{}
}

// Raise signals one interrupt.
func (i *IRQ) Raise() {
	i.count.Add(1)
	i.mu.Lock()
	if i.ch != nil {
		close(i.ch)
		i.ch = nil
	}
	i.mu.Unlock()
}

// Count implements virtio.Interrupt.
func (i *IRQ) Count() uint32 { return i.count.Load() }

// Wait implements virtio.Interrupt.
func (i *IRQ) Wait(seen uint32, timeout time.Duration) {
	i.mu.Lock()
	if i.count.Load() != seen {
		i.mu.Unlock()
		return
	}
	if i.ch == nil {
		i.ch = make(chan struct{})
	}
	ch := i.ch
	i.mu.Unlock()
	if timeout < 0 {
		<-ch
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

// Device is a fake virtio-mmio device. Set the exported fields before the
// driver opens it.
type Device struct {
	Mem       *virtio.SimMem
	IRQ       *IRQ
	ID        uint32
	Features  uint64 // offered (VERSION_1 is added by New)
	Config    []byte // device configuration space
	QueueMax  int    // QueueNumMax of every queue
	NumQueues int
	// OnNotify runs in the goroutine that wrote QueueNotify.
	OnNotify func(q *Queue)
	// NoNotify makes the device ask not to be notified
	// (VRING_USED_F_NO_NOTIFY, or a stale avail_event under EVENT_IDX):
	// it then has to poll (Serve does).
	NoNotify bool
	// Version is what the Version register reads (default 2).
	Version uint32

	Reads, Writes, Notifies, Interrupts, Acks atomic.Uint64

	mu             sync.Mutex
	status         uint32
	devFeatSel     uint32
	drvFeatSel     uint32
	driverFeatures uint64
	queueSel       uint32
	queues         []*Queue
	intStatus      uint32
	resets         int
}

// New returns a device with numQueues queues of at most queueMax entries.
func New(mem *virtio.SimMem, id uint32, features uint64, config []byte, numQueues, queueMax int) *Device {
	d := &Device{Mem: mem, IRQ: &IRQ{}, ID: id, Features: features | virtio.FVersion1, Config: config, QueueMax: queueMax, NumQueues: numQueues, Version: 2}
	for i := 0; i < numQueues; i++ {
		d.queues = append(d.queues, &Queue{dev: d, Index: i, notify: make(chan struct{}, 1)})
	}
	return d
}

// Queue returns queue i's device side.
func (d *Device) Queue(i int) *Queue { return d.queues[i] }

// Status returns the device status register.
func (d *Device) Status() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// DriverFeatures returns what the driver accepted.
func (d *Device) DriverFeatures() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.driverFeatures
}

// Resets counts writes of 0 to Status.
func (d *Device) Resets() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.resets
}

// SetNeedsReset sets DEVICE_NEEDS_RESET, as a device that hit an error.
func (d *Device) SetNeedsReset() {
	d.mu.Lock()
	d.status |= virtio.StatusDeviceNeedsReset
	d.mu.Unlock()
}

// Read32 implements virtio.Transport.
func (d *Device) Read32(off uint32) uint32 {
	d.Reads.Add(1)
	if off >= virtio.RegConfig {
		return binary.LittleEndian.Uint32(d.config(off, 4))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch off {
	case virtio.RegMagic:
		return virtio.MagicValue
	case virtio.RegVersion:
		return d.Version
	case virtio.RegDeviceID:
		return d.ID
	case virtio.RegVendorID:
		return 0x554d4551
	case virtio.RegDeviceFeatures:
		switch d.devFeatSel {
		case 0:
			return uint32(d.Features)
		case 1:
			return uint32(d.Features >> 32)
		}
		return 0
	case virtio.RegQueueNumMax:
		if int(d.queueSel) < len(d.queues) {
			return uint32(d.QueueMax)
		}
		return 0
	case virtio.RegQueueReady:
		if q := d.selected(); q != nil && q.ready.Load() {
			return 1
		}
		return 0
	case virtio.RegInterruptStatus:
		return d.intStatus
	case virtio.RegStatus:
		return d.status
	case virtio.RegConfigGeneration:
		return 0
	}
	panic(fmt.Sprintf("virtiotest: read of register %#x", off))
}

// Read16 implements virtio.Transport (configuration space only).
func (d *Device) Read16(off uint32) uint16 {
	d.Reads.Add(1)
	if off < virtio.RegConfig || off%2 != 0 {
		panic(fmt.Sprintf("virtiotest: 16-bit read of %#x", off))
	}
	return binary.LittleEndian.Uint16(d.config(off, 2))
}

// Read8 implements virtio.Transport (configuration space only).
func (d *Device) Read8(off uint32) uint8 {
	d.Reads.Add(1)
	if off < virtio.RegConfig {
		panic(fmt.Sprintf("virtiotest: 8-bit read of %#x", off))
	}
	return d.config(off, 1)[0]
}

func (d *Device) config(off uint32, n int) []byte {
	o := int(off - virtio.RegConfig)
	if o+n > len(d.Config) {
		return make([]byte, n)
	}
	return d.Config[o : o+n]
}

func (d *Device) selected() *Queue {
	if int(d.queueSel) < len(d.queues) {
		return d.queues[d.queueSel]
	}
	return nil
}

// Write32 implements virtio.Transport.
func (d *Device) Write32(off uint32, v uint32) {
	d.Writes.Add(1)
	if off == virtio.RegQueueNotify {
		d.Notifies.Add(1)
		if int(v) < len(d.queues) {
			q := d.queues[v]
			select {
			case q.notify <- struct{}{}:
			default:
			}
			if d.OnNotify != nil {
				d.OnNotify(q)
			}
		}
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	q := d.selected()
	setup := func(f func()) {
		if q == nil || q.ready.Load() || d.status&virtio.StatusDriverOK != 0 {
			panic(fmt.Sprintf("virtiotest: queue setup register %#x written for a ready or missing queue", off))
		}
		f()
	}
	switch off {
	case virtio.RegDeviceFeaturesSel:
		d.devFeatSel = v
	case virtio.RegDriverFeaturesSel:
		d.drvFeatSel = v
	case virtio.RegDriverFeatures:
		if d.status&virtio.StatusFeaturesOK != 0 {
			panic("virtiotest: driver features written after FEATURES_OK")
		}
		switch d.drvFeatSel {
		case 0:
			d.driverFeatures = d.driverFeatures&^0xffffffff | uint64(v)
		case 1:
			d.driverFeatures = d.driverFeatures&0xffffffff | uint64(v)<<32
		}
	case virtio.RegQueueSel:
		d.queueSel = v
	case virtio.RegQueueNum:
		setup(func() { q.Num = v })
	case virtio.RegQueueDescLow:
		setup(func() { q.Desc = q.Desc&^0xffffffff | uint64(v) })
	case virtio.RegQueueDescHigh:
		setup(func() { q.Desc = q.Desc&0xffffffff | uint64(v)<<32 })
	case virtio.RegQueueDriverLow:
		setup(func() { q.Driver = q.Driver&^0xffffffff | uint64(v) })
	case virtio.RegQueueDriverHigh:
		setup(func() { q.Driver = q.Driver&0xffffffff | uint64(v)<<32 })
	case virtio.RegQueueDeviceLow:
		setup(func() { q.Used = q.Used&^0xffffffff | uint64(v) })
	case virtio.RegQueueDeviceHigh:
		setup(func() { q.Used = q.Used&0xffffffff | uint64(v)<<32 })
	case virtio.RegQueueReady:
		if q != nil {
			if v == 1 {
				if q.Num == 0 || q.Num > uint32(d.QueueMax) || q.Num&(q.Num-1) != 0 {
					panic(fmt.Sprintf("virtiotest: queue %d made ready with size %d", q.Index, q.Num))
				}
				q.start(d.driverFeatures&virtio.FEventIdx != 0)
			}
			q.ready.Store(v == 1)
		}
	case virtio.RegInterruptACK:
		d.Acks.Add(1)
		d.intStatus &^= v
	case virtio.RegStatus:
		if v == 0 {
			d.resets++
			d.status = 0
			d.driverFeatures = 0
			d.intStatus = 0
			for _, q := range d.queues {
				q.reset()
			}
			return
		}
		if v&virtio.StatusFeaturesOK != 0 && d.status&virtio.StatusFeaturesOK == 0 {
			if d.driverFeatures&^d.Features != 0 || d.driverFeatures&virtio.FVersion1 == 0 {
				d.status = v &^ virtio.StatusFeaturesOK // refuse
				return
			}
		}
		d.status = v
	default:
		panic(fmt.Sprintf("virtiotest: write of register %#x", off))
	}
}

// Queue is the device side of one split virtqueue.
type Queue struct {
	dev    *Device
	Index  int
	Num    uint32
	Desc   uint64
	Driver uint64
	Used   uint64

	ready    atomic.Bool
	notify   chan struct{}
	mu       sync.Mutex // serialises Pop and Push
	eventIdx bool
	avail    uint16 // next avail entry to pop
	used     uint16 // used idx written so far
	signaled uint16 // used idx at the last interrupt decision
}

func (q *Queue) start(eventIdx bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.eventIdx, q.avail, q.used, q.signaled = eventIdx, 0, 0, 0
	if q.dev.NoNotify {
		if eventIdx {
			q.store32(q.Used+4+8*uint64(q.Num), 0x8000) // avail_event far ahead
		} else {
			q.store32(q.Used, 1) // VRING_USED_F_NO_NOTIFY, idx 0
		}
	}
}

func (q *Queue) reset() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ready.Store(false)
	q.Num, q.Desc, q.Driver, q.Used = 0, 0, 0, 0
}

func (q *Queue) word(phys uint64) *uint32 {
	b := q.dev.Mem.Slice(phys, 4)
	if b == nil {
		panic(fmt.Sprintf("virtiotest: ring word at %#x outside memory", phys))
	}
	return (*uint32)(ptr(b))
}

func (q *Queue) load32(phys uint64) uint32     { return atomic.LoadUint32(q.word(phys)) }
func (q *Queue) store32(phys uint64, v uint32) { atomic.StoreUint32(q.word(phys), v) }

// Ready reports whether the driver made the queue ready (and not reset it).
func (q *Queue) Ready() bool { return q.ready.Load() }

// Notified returns a channel that receives when the driver notifies.
func (q *Queue) Notified() <-chan struct{} { return q.notify }

// Seg is one buffer of a popped chain: Data is the simulated memory.
type Seg struct {
	Data   []byte
	Phys   uint64
	Writes bool // device-writable
}

// Chain is a popped descriptor chain.
type Chain struct {
	Head uint16
	Segs []Seg
}

// Pop takes the next available chain, if any. A malformed chain panics
// (the tests treat it as a driver bug).
func (q *Queue) Pop() (Chain, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.ready.Load() {
		return Chain{}, false
	}
	idx := uint16(q.load32(q.Driver) >> 16)
	if idx == q.avail {
		return Chain{}, false
	}
	if uint16(idx-q.avail) > uint16(q.Num) {
		panic(fmt.Sprintf("virtiotest: avail idx %d runs %d ahead", idx, idx-q.avail))
	}
	slot := q.Driver + 4 + 2*uint64(uint32(q.avail)%q.Num)
	head := binary.LittleEndian.Uint16(q.dev.Mem.Slice(slot, 2))
	q.avail++
	if !q.dev.NoNotify && q.eventIdx {
		q.store32(q.Used+4+8*uint64(q.Num), uint32(q.avail)) // notify me at the next one
	}
	c := Chain{Head: head}
	i, seenWrite := head, false
	for n := 0; ; n++ {
		if uint32(i) >= q.Num || n >= int(q.Num) {
			panic(fmt.Sprintf("virtiotest: bad descriptor chain at head %d", head))
		}
		d := q.dev.Mem.Slice(q.Desc+16*uint64(i), 16)
		addr := binary.LittleEndian.Uint64(d)
		ln := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		data := q.dev.Mem.Slice(addr, int(ln))
		if data == nil {
			panic(fmt.Sprintf("virtiotest: buffer [%#x,+%d) outside memory", addr, ln))
		}
		w := flags&2 != 0
		if seenWrite && !w {
			panic("virtiotest: device-readable buffer after a device-writable one")
		}
		seenWrite = seenWrite || w
		c.Segs = append(c.Segs, Seg{Data: data, Phys: addr, Writes: w})
		if flags&1 == 0 {
			break
		}
		i = next
	}
	return c, true
}

// Push returns a chain to the driver with written bytes. Call Signal
// after a batch.
func (q *Queue) Push(head uint16, written uint32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.dev.Mem.Slice(q.Used+4+8*uint64(uint32(q.used)%q.Num), 8)
	binary.LittleEndian.PutUint32(e, uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.used++
	var flags uint32
	if q.dev.NoNotify && !q.eventIdx {
		flags = 1
	}
	q.store32(q.Used, uint32(q.used)<<16|flags)
}

// Signal raises the interrupt if the driver wants one for the chains
// pushed since the last Signal (VRING_AVAIL_F_NO_INTERRUPT, or used_event
// under EVENT_IDX).
func (q *Queue) Signal() {
	q.mu.Lock()
	old, now := q.signaled, q.used
	q.signaled = now
	var need bool
	if old == now {
		need = false
	} else if q.eventIdx {
		ev := uint16(q.load32(q.Driver + 4 + 2*uint64(q.Num)))
		need = now-ev-1 < now-old
	} else {
		need = q.load32(q.Driver)&1 == 0
	}
	q.mu.Unlock()
	if need {
		q.dev.mu.Lock()
		q.dev.intStatus |= virtio.IntUsedBuffer
		q.dev.mu.Unlock()
		q.dev.Interrupts.Add(1)
		q.dev.IRQ.Raise()
	}
}

// Serve runs the device side of q until stop is closed: it pops chains,
// hands each to handle (which returns the bytes written) and pushes it,
// signalling after each batch. It waits for notifications, and also
// polls every 100 µs (a device that asked not to be notified must).
func (q *Queue) Serve(stop <-chan struct{}, handle func(Chain) uint32) {
	t := time.NewTicker(100 * time.Microsecond)
	defer t.Stop()
	for {
		n := 0
		for {
			c, ok := q.Pop()
			if !ok {
				break
			}
			q.Push(c.Head, handle(c))
			n++
		}
		if n > 0 {
			q.Signal()
			continue
		}
		select {
		case <-stop:
			return
		case <-q.notify:
		case <-t.C:
		}
	}
}
