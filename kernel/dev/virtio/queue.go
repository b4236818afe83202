package virtio

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Split virtqueue, driver side (spec §2.7).
//
// Memory (one DMA region, zeroed at setup):
//
//	[0, 16N)            descriptor table
//	[16N, 16N+8+2N)     avail: flags, idx, ring[N], used_event (+2 pad)
//	[usedOff, +8+8N)    used:  flags, idx, ring[N]{id,len}, avail_event (+2 pad)
//
// Each ring's flags and idx share one aligned 32-bit word; the driver
// publishes avail idx with one 32-bit atomic store of that word (the
// descriptors and ring slots written before it are visible to the device
// first) and reads used idx with one 32-bit atomic load (the used entries
// it then reads were written before it). used_event and avail_event are
// read and written as the low half of their own aligned 32-bit word; the
// pad after each ring makes that word lie inside the region.
//
// Descriptors: a free list kept in driver-private memory (next), so a
// device scribbling on the table cannot corrupt the driver's bookkeeping;
// a completed chain is found by its head and its recorded length. Every
// method is safe for concurrent use (one mutex); register writes
// (notifications) happen outside it.

const (
	descFNext  = 1
	descFWrite = 2

	availFNoInterrupt = 1
	usedFNoNotify     = 1
)

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

type usedElem struct {
	id  uint32
	len uint32
}

// Buffer is one element of a descriptor chain: Len bytes at physical
// address Addr, written by the device if DeviceWrites (device-readable
// buffers must come before device-writable ones, §2.7.4.2).
type Buffer struct {
	Addr         uint64
	Len          uint32
	DeviceWrites bool
}

// Used is a completed chain: the token given to Add and the number of
// bytes the device wrote into its device-writable buffers.
type Used struct {
	Token uint64
	Len   uint32
}

// QueueStats count what a queue did; notifications and interrupts are the
// expensive events (each a VM exit in the image).
type QueueStats struct {
	Added      uint64 // chains added
	Completed  uint64 // chains reaped
	Kicks      uint64 // Kick calls that published something
	Notifies   uint64 // QueueNotify writes (VM exits)
	Suppressed uint64 // publications that needed no notification
	Doorbells  uint64 // notifications rung as doorbells (Lazy)
	Sleeps     uint64 // Wait calls that slept on the interrupt
	Wakeups    uint64 // sleeps ended by an interrupt
}

// Queue is the driver side of one split virtqueue.
type Queue struct {
	dev      *Device
	index    uint16
	size     uint16
	mem      Region
	dma      DMA
	eventIdx bool

	// SpinTime is how long Wait polls the used ring before it sleeps on
	// the interrupt (default 50 µs: about one VM exit).
	SpinTime time.Duration
	// Lazy lets Kick ring the transport's doorbell (Doorbell) instead of
	// notifying: the device then hears of the chains a little later, when
	// the kernel next exits, and the driver pays no exit. For queues whose
	// requests can wait that long (transmitted frames: the sender goes on
	// working, and the kernel delivers the doorbell when the vCPU idles).
	Lazy bool

	mu         sync.Mutex
	desc       []desc
	availHdr   *uint32
	availRing  []uint16
	usedEvent  *uint32
	usedHdr    *uint32
	usedRing   []usedElem
	availEvent *uint32

	freeHead  uint16
	numFree   int
	next      []uint16
	chainLen  []uint16
	tokens    []uint64
	inFlight  []bool
	availIdx  uint16 // chains added (mod 2^16): the next avail slot
	published uint16 // avail idx the device has been shown
	intrOn    bool
	sleepers  int
	broken    error

	lastUsed atomic.Uint32 // low 16 bits: used idx reaped so far

	added, completed, kicks, notifies, suppressed, doorbells, sleeps, wakeups atomic.Uint64
}

// NewQueue sets up queue index of d with up to size descriptors (0: the
// device's maximum, capped at 256; rounded down to a power of two), its
// memory from dma. Interrupts start suppressed: drivers poll, and Wait
// enables them only while someone sleeps. Call before d.Ready.
func NewQueue(d *Device, index, size int, dma DMA) (*Queue, error) {
	t := d.t
	t.Write32(RegQueueSel, uint32(index))
	if t.Read32(RegQueueReady) != 0 {
		return nil, fmt.Errorf("virtio: queue %d already in use: %w", index, syscall.EBUSY)
	}
	max := int(t.Read32(RegQueueNumMax))
	if max == 0 {
		return nil, fmt.Errorf("virtio: queue %d not available: %w", index, syscall.ENOENT)
	}
	if size <= 0 {
		size = 256
	}
	size = min(size, max, 32768)
	for size&(size-1) != 0 {
		size &= size - 1
	}
	n := size
	availOff := 16 * n
	usedOff := (availOff + 8 + 2*n + 63) &^ 63
	total := usedOff + 8 + 8*n
	mem, err := dma.Alloc(total)
	if err != nil {
		return nil, fmt.Errorf("virtio: queue %d: %w", index, err)
	}
	clear(mem.Buf)
	b := mem.Buf
	q := &Queue{
		dev: d, index: uint16(index), size: uint16(n), mem: mem, dma: dma,
		eventIdx: d.Has(FEventIdx), SpinTime: 50 * time.Microsecond,
		desc:       unsafe.Slice((*desc)(unsafe.Pointer(&b[0])), n),
		availHdr:   (*uint32)(unsafe.Pointer(&b[availOff])),
		availRing:  unsafe.Slice((*uint16)(unsafe.Pointer(&b[availOff+4])), n),
		usedEvent:  (*uint32)(unsafe.Pointer(&b[availOff+4+2*n])),
		usedHdr:    (*uint32)(unsafe.Pointer(&b[usedOff])),
		usedRing:   unsafe.Slice((*usedElem)(unsafe.Pointer(&b[usedOff+4])), n),
		availEvent: (*uint32)(unsafe.Pointer(&b[usedOff+4+8*n])),
		numFree:    n,
		next:       make([]uint16, n),
		chainLen:   make([]uint16, n),
		tokens:     make([]uint64, n),
		inFlight:   make([]bool, n),
	}
	for i := range q.next {
		q.next[i] = uint16(i + 1)
	}
	q.setInterrupts(false)
	t.Write32(RegQueueNum, uint32(n))
	t.Write32(RegQueueDescLow, uint32(mem.Phys))
	t.Write32(RegQueueDescHigh, uint32(mem.Phys>>32))
	t.Write32(RegQueueDriverLow, uint32(mem.Phys+uint64(availOff)))
	t.Write32(RegQueueDriverHigh, uint32((mem.Phys+uint64(availOff))>>32))
	t.Write32(RegQueueDeviceLow, uint32(mem.Phys+uint64(usedOff)))
	t.Write32(RegQueueDeviceHigh, uint32((mem.Phys+uint64(usedOff))>>32))
	t.Write32(RegQueueReady, 1)
	d.queues = append(d.queues, q)
	return q, nil
}

// Size is the number of descriptors.
func (q *Queue) Size() int { return int(q.size) }

// NumFree is the number of free descriptors now.
func (q *Queue) NumFree() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.numFree
}

// Add puts one descriptor chain in the avail ring, not yet visible to the
// device (Kick publishes). token comes back in Used. It fails with
// ErrQueueFull when fewer than len(bufs) descriptors are free.
func (q *Queue) Add(bufs []Buffer, token uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil {
		return q.broken
	}
	if len(bufs) == 0 || len(bufs) > int(q.size) {
		return fmt.Errorf("virtio: queue %d: chain of %d buffers (queue size %d): %w", q.index, len(bufs), q.size, syscall.EINVAL)
	}
	if q.numFree < len(bufs) {
		return ErrQueueFull
	}
	head := q.freeHead
	i := head
	for k, b := range bufs {
		d := &q.desc[i]
		d.addr, d.len = b.Addr, b.Len
		var f uint16
		if b.DeviceWrites {
			f = descFWrite
		}
		d.next = 0
		if k < len(bufs)-1 {
			f |= descFNext
			d.next = q.next[i]
		}
		d.flags = f
		i = q.next[i]
	}
	q.freeHead = i
	q.numFree -= len(bufs)
	q.chainLen[head] = uint16(len(bufs))
	q.tokens[head] = token
	q.inFlight[head] = true
	q.availRing[q.availIdx&(q.size-1)] = head
	q.availIdx++
	q.added.Add(1)
	return nil
}

// Kick publishes every chain added so far and notifies the device unless
// it said it does not need to be (VRING_USED_F_NO_NOTIFY, or its
// avail_event under EVENT_IDX). It reports whether it notified: a VM exit
// in the image. Call it once per batch.
func (q *Queue) Kick() bool {
	q.mu.Lock()
	if q.availIdx == q.published {
		q.mu.Unlock()
		return false
	}
	old, now := q.published, q.availIdx
	q.published = now
	q.storeAvailHdr()
	// The store above is sequentially consistent (XCHG on amd64): the
	// device's flags or avail_event are read after our idx is visible, so
	// a device that went to sleep before seeing it has asked to be woken.
	var need bool
	if q.eventIdx {
		ev := uint16(atomic.LoadUint32(q.availEvent))
		need = now-ev-1 < now-old
	} else {
		need = atomic.LoadUint32(q.usedHdr)&usedFNoNotify == 0
	}
	q.mu.Unlock()
	q.kicks.Add(1)
	if !need {
		q.suppressed.Add(1)
		return false
	}
	if db, ok := q.dev.t.(Doorbell); ok && q.Lazy && db.Ring(q.index) {
		q.doorbells.Add(1)
		return true
	}
	q.notifies.Add(1)
	q.dev.t.Write32(RegQueueNotify, uint32(q.index))
	return true
}

// Notify publishes what was added and notifies the device at once,
// whatever it asked for and even if Lazy (which may have left a doorbell
// the device has not heard yet): for a driver that needs the device to
// consume now, e.g. because the queue is full.
func (q *Queue) Notify() {
	q.mu.Lock()
	if q.availIdx != q.published {
		q.published = q.availIdx
		q.storeAvailHdr()
	}
	q.mu.Unlock()
	q.notifies.Add(1)
	q.dev.t.Write32(RegQueueNotify, uint32(q.index))
}

// storeAvailHdr writes avail flags and the published idx as one word.
// q.mu held.
func (q *Queue) storeAvailHdr() {
	var f uint32
	if !q.intrOn && !q.eventIdx {
		f = availFNoInterrupt
	}
	atomic.StoreUint32(q.availHdr, uint32(q.published)<<16|f)
}

// setInterrupts asks the device for used-buffer interrupts or not. Without
// EVENT_IDX that is VRING_AVAIL_F_NO_INTERRUPT; with it (flags must then
// stay 0) used_event is set to the next used idx, or half the index space
// ahead so none comes for 32768 completions. q.mu held.
func (q *Queue) setInterrupts(on bool) {
	q.intrOn = on
	if q.eventIdx {
		ev := uint16(q.lastUsed.Load())
		if !on {
			ev += 0x8000
		}
		atomic.StoreUint32(q.usedEvent, uint32(ev))
		return
	}
	q.storeAvailHdr()
}

// Pending reports whether the device has completed chains not yet reaped.
// One load of shared memory: the polling primitive.
func (q *Queue) Pending() bool {
	return uint16(atomic.LoadUint32(q.usedHdr)>>16) != uint16(q.lastUsed.Load())
}

// Reap moves up to len(out) completed chains into out, frees their
// descriptors and returns how many. A device that reports a chain that
// is not in flight breaks the queue: Reap and Add then fail with an
// error wrapping ErrDevice.
func (q *Queue) Reap(out []Used) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil {
		return 0, q.broken
	}
	used := uint16(atomic.LoadUint32(q.usedHdr) >> 16)
	last := uint16(q.lastUsed.Load())
	if used-last > q.size {
		q.broken = fmt.Errorf("virtio: queue %d: used idx %d runs %d ahead of %d (size %d): %w", q.index, used, used-last, last, q.size, ErrDevice)
		return 0, q.broken
	}
	n := 0
	for last != used && n < len(out) {
		e := q.usedRing[last&(q.size-1)]
		if e.id >= uint32(q.size) || !q.inFlight[e.id] {
			q.lastUsed.Store(uint32(last))
			q.broken = fmt.Errorf("virtio: queue %d: used entry for descriptor %d, which is not in flight: %w", q.index, e.id, ErrDevice)
			return n, q.broken
		}
		head := uint16(e.id)
		out[n] = Used{Token: q.tokens[head], Len: e.len}
		tail := head
		for k := 1; k < int(q.chainLen[head]); k++ {
			tail = q.next[tail]
		}
		q.next[tail] = q.freeHead
		q.freeHead = head
		q.numFree += int(q.chainLen[head])
		q.inFlight[head] = false
		last++
		n++
	}
	q.lastUsed.Store(uint32(last))
	if n > 0 && q.eventIdx {
		// Sleepers want the next completion; pollers none for a long while.
		ev := last
		if !q.intrOn {
			ev += 0x8000
		}
		atomic.StoreUint32(q.usedEvent, uint32(ev))
	}
	q.completed.Add(uint64(n))
	return n, nil
}

// Arm turns the device's interrupts for this queue on until Disarm, for a
// driver that waits for them elsewhere than in Wait (one wait for several
// sources). Check Pending after Arm and before sleeping.
func (q *Queue) Arm() {
	q.mu.Lock()
	q.sleepers++
	if q.sleepers == 1 {
		q.setInterrupts(true)
	}
	q.mu.Unlock()
}

// Disarm undoes Arm.
func (q *Queue) Disarm() {
	q.mu.Lock()
	q.sleepers--
	if q.sleepers == 0 {
		q.setInterrupts(false)
	}
	q.mu.Unlock()
}

// Wait returns true as soon as completed chains are pending, false after
// timeout (<0: none). It polls the used ring for SpinTime, yielding the
// processor between looks; then, if the device has an interrupt, it turns
// interrupts on, re-checks the ring and sleeps on the interrupt count
// read before that check (futex in the image), so a completion can never
// slip between the check and the sleep. Interrupts stay on only while
// some goroutine sleeps.
func (q *Queue) Wait(timeout time.Duration) bool {
	if q.Pending() {
		return true
	}
	start := time.Now()
	spinEnd := start.Add(q.SpinTime)
	var deadline time.Time
	if timeout >= 0 {
		deadline = start.Add(timeout)
	}
	irq := q.dev.irq
	for {
		if q.Pending() {
			return true
		}
		now := time.Now()
		if !deadline.IsZero() && !now.Before(deadline) {
			return false
		}
		if irq == nil || now.Before(spinEnd) {
			runtime.Gosched()
			continue
		}
		q.mu.Lock()
		q.sleepers++
		if q.sleepers == 1 {
			q.setInterrupts(true)
		}
		q.mu.Unlock()
		seen := irq.Count()
		woke := false
		if !q.Pending() {
			q.sleeps.Add(1)
			d := time.Duration(-1)
			if !deadline.IsZero() {
				d = deadline.Sub(now)
			}
			irq.Wait(seen, d)
			woke = irq.Count() != seen
		}
		q.mu.Lock()
		q.sleepers--
		if q.sleepers == 0 {
			q.setInterrupts(false)
		}
		q.mu.Unlock()
		if woke {
			q.wakeups.Add(1)
			// No InterruptACK: interrupts here are counts that the
			// device bumps for every event (kernel/boot), not a level
			// line held until acknowledged, so the write would only
			// cost a VM exit (~85 µs under PVM) per wake-up.
			if q.dev.AckWakeups {
				q.dev.AckInterrupt()
			}
		}
		spinEnd = time.Now().Add(q.SpinTime)
	}
}

// Stats returns the queue's counters.
func (q *Queue) Stats() QueueStats {
	return QueueStats{Added: q.added.Load(), Completed: q.completed.Load(), Kicks: q.kicks.Load(),
		Notifies: q.notifies.Load(), Suppressed: q.suppressed.Load(), Doorbells: q.doorbells.Load(), Sleeps: q.sleeps.Load(), Wakeups: q.wakeups.Load()}
}

func (q *Queue) free() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.mem.Buf == nil {
		return nil
	}
	err := q.dma.Free(q.mem)
	q.mem = Region{}
	q.broken = fmt.Errorf("virtio: queue %d: device closed: %w", q.index, syscall.EBADF)
	return err
}
