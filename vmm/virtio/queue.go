package virtio

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Queue is the device side of one split virtqueue (virtio 1.x §2.7).
//
// Invariants:
//   - one goroutine consumes the avail ring (Next, Wait, Pending); any
//     number may complete chains (Push, Complete, Flush), serialised by mu;
//   - every index and address read from guest memory is checked before
//     use: a malformed chain is reported in Chain.Err and still returned
//     to the driver through the used ring; a queue whose rings cannot be
//     trusted any more (avail index jumping, head out of range) is marked
//     broken, the transport sets DEVICE_NEEDS_RESET, and the queue yields
//     nothing until the driver resets the device;
//   - the guest never crashes the monitor: no slice is taken without a
//     bounds check (Memory).
//
// Notifications are VM exits, so the consumer keeps them off while it
// works and for Poll after the ring runs dry (VRING_USED_F_NO_NOTIFY, or a
// stale avail_event under VIRTIO_RING_F_EVENT_IDX); a busy driver then
// never notifies. Interrupts follow the driver's wish
// (VRING_AVAIL_F_NO_INTERRUPT, or used_event under EVENT_IDX).
type Queue struct {
	Index int
	// Poll is how long Wait spins on the avail ring before it asks the
	// driver for a notification and sleeps.
	Poll time.Duration

	mem               Memory
	size              uint16
	desc, avail, used uint64
	eventIdx          bool
	kick              <-chan struct{}
	signal            func()      // used-buffer interrupt (transport)
	broken            func(error) // DEVICE_NEEDS_RESET (transport)
	dead              atomic.Bool

	lastAvail uint16 // consumer's next avail slot

	mu         sync.Mutex
	usedIdx    uint16
	lastSignal uint16 // used index when the driver was last considered for an interrupt
	unsignaled bool   // pushes since then
}

// QueueConfig is what the driver set up for one queue.
type QueueConfig struct {
	Size                 uint16
	Desc, Driver, Device uint64 // descriptor table, avail ring, used ring
}

// NewQueue makes the device side of a queue the driver configured. kick
// receives the driver's notifications; signal raises a used-buffer
// interrupt; broken marks the device as needing a reset. The transport
// calls it; tests may too.
func NewQueue(index int, mem Memory, qc QueueConfig, eventIdx bool, kick <-chan struct{}, signal func(), broken func(error)) (*Queue, error) {
	if err := qc.Validate(mem, MaxQueueSize); err != nil {
		return nil, err
	}
	q := &Queue{Index: index, Poll: DefaultPoll, mem: mem, size: qc.Size, desc: qc.Desc, avail: qc.Driver, used: qc.Device,
		eventIdx: eventIdx, kick: kick, signal: signal, broken: broken}
	// Indices start at 0 after a reset (§2.7): the driver zeroes its
	// rings, and the device's own counters begin there too.
	return q, nil
}

// DefaultPoll is how long a queue consumer polls after the ring runs dry.
// A notification costs the guest a VM exit (~50 µs under PVM), so a
// driver that submits again within this window saves one.
const DefaultPoll = 100 * time.Microsecond

// Validate checks a queue's size and rings against memory.
func (qc QueueConfig) Validate(mem Memory, max uint16) error {
	n := qc.Size
	switch {
	case n == 0 || n&(n-1) != 0 || n > max:
		return fmt.Errorf("virtio: queue size %d not a power of 2 in [1, %d]", n, max)
	case qc.Desc%16 != 0 || !mem.InRange(qc.Desc, DescSize*uint64(n)):
		return fmt.Errorf("virtio: descriptor table %#x misaligned or outside guest memory", qc.Desc)
	case qc.Driver%2 != 0 || !mem.InRange(qc.Driver, AvailSize(n)):
		return fmt.Errorf("virtio: avail ring %#x misaligned or outside guest memory", qc.Driver)
	case qc.Device%4 != 0 || !mem.InRange(qc.Device, UsedSize(n)):
		return fmt.Errorf("virtio: used ring %#x misaligned or outside guest memory", qc.Device)
	}
	return nil
}

// Size is the number of entries.
func (q *Queue) Size() uint16 { return q.size }

// Memory is the guest memory the queue's buffers live in.
func (q *Queue) Memory() Memory { return q.mem }

// Chain is one descriptor chain taken from the avail ring. Its buffers
// are slices of guest memory: device-readable ones (driver → device)
// first, then device-writable ones.
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
	// Tail is the last descriptor's buffer when it is valid and
	// device-writable (where a block request's status byte goes), even if
	// the chain is otherwise malformed.
	Tail []byte
	// Err says why the chain is malformed (a buffer outside memory, a
	// readable buffer after a writable one, a loop, an indirect
	// descriptor): the device must fail the request, not act on it. The
	// chain must still be completed.
	Err error
}

// ErrBroken is returned by Next once the queue can no longer be trusted.
var ErrBroken = errors.New("virtio: queue broken, device needs reset")

// ReadableLen and WritableLen are the chain's byte counts.
func (c *Chain) ReadableLen() int { return segLen(c.Readable) }
func (c *Chain) WritableLen() int { return segLen(c.Writable) }

func segLen(s [][]byte) int {
	n := 0
	for _, b := range s {
		n += len(b)
	}
	return n
}

// Gather copies the readable bytes from offset off into dst and returns
// how many it copied.
func (c *Chain) Gather(dst []byte, off int) int { return gather(c.Readable, dst, off) }

// Scatter copies src into the writable bytes from offset off and returns
// how many it copied.
func (c *Chain) Scatter(off int, src []byte) int { return scatter(c.Writable, off, src) }

func gather(segs [][]byte, dst []byte, off int) int {
	n := 0
	for _, b := range segs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		k := copy(dst[n:], b[off:])
		n += k
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

func scatter(segs [][]byte, off int, src []byte) int {
	n := 0
	for _, b := range segs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		k := copy(b[off:], src[n:])
		n += k
		off = 0
		if n == len(src) {
			break
		}
	}
	return n
}

// Sub returns the segments covering bytes [off, off+n) of segs (n < 0: to
// the end), sharing their memory.
func Sub(segs [][]byte, off, n int) [][]byte {
	var out [][]byte
	for _, b := range segs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if n >= 0 && len(b) > n {
			b = b[:n]
		}
		if len(b) > 0 {
			out = append(out, b)
		}
		if n >= 0 {
			n -= len(b)
			if n == 0 {
				break
			}
		}
	}
	return out
}

// Pending reports whether the avail ring holds chains not yet taken.
func (q *Queue) Pending() bool {
	if q.dead.Load() {
		return false
	}
	idx, err := q.mem.Load16(q.avail + 2)
	return err != nil || idx != q.lastAvail
}

// Next takes the next available chain into c (reusing its slices). It
// returns false when the ring is empty, and ErrBroken when the queue is
// unusable.
func (q *Queue) Next(c *Chain) (bool, error) {
	if q.dead.Load() {
		return false, ErrBroken
	}
	idx, err := q.mem.Load16(q.avail + 2)
	if err != nil {
		return false, q.fail(err)
	}
	if idx == q.lastAvail {
		return false, nil
	}
	if uint16(idx-q.lastAvail) > q.size {
		return false, q.fail(fmt.Errorf("virtio: queue %d: avail index %d is more than %d ahead of %d", q.Index, idx, q.size, q.lastAvail))
	}
	head, err := q.mem.Read16(q.avail + 4 + 2*uint64(q.lastAvail%q.size))
	if err != nil {
		return false, q.fail(err)
	}
	if head >= q.size {
		return false, q.fail(fmt.Errorf("virtio: queue %d: head %d out of range", q.Index, head))
	}
	q.lastAvail++
	q.walk(c, head)
	return true, nil
}

func (q *Queue) walk(c *Chain, head uint16) {
	c.Head, c.Readable, c.Writable, c.Tail, c.Err = head, c.Readable[:0], c.Writable[:0], nil, nil
	bad := func(format string, args ...any) {
		if c.Err == nil {
			c.Err = fmt.Errorf("virtio: queue %d chain %d: "+format, append([]any{q.Index, head}, args...)...)
		}
	}
	i := head
	writing := false
	for n := 0; ; n++ {
		if n == int(q.size) {
			bad("longer than the queue (a loop)")
			c.Tail = nil
			return
		}
		d, _ := q.mem.Slice(q.desc+DescSize*uint64(i), DescSize) // in range: Validate
		addr := le64(d[0:])
		ln := le32(d[8:])
		flags := le16(d[12:])
		next := le16(d[14:])
		buf, ok := q.mem.Slice(addr, uint64(ln))
		write := flags&DescFWrite != 0
		switch {
		case flags&DescFIndirect != 0:
			bad("indirect descriptor %d (not negotiated)", i)
			ok = false
		case !ok:
			bad("descriptor %d: buffer %#x+%d outside guest memory", i, addr, ln)
		case write:
			writing = true
			c.Writable = append(c.Writable, buf)
		case writing:
			bad("descriptor %d: device-readable after device-writable", i)
			ok = false
		default:
			c.Readable = append(c.Readable, buf)
		}
		if flags&DescFNext == 0 {
			if ok && write {
				c.Tail = buf
			}
			return
		}
		if next >= q.size {
			bad("descriptor %d: next %d out of range", i, next)
			return
		}
		i = next
	}
}

func (q *Queue) fail(err error) error {
	if !q.dead.Swap(true) && q.broken != nil {
		q.broken(err)
	}
	return ErrBroken
}

// Push returns a chain to the driver with the number of bytes the device
// wrote into it. The interrupt, if the driver wants one, waits for Flush.
func (q *Queue) Push(head uint16, written uint32) {
	q.mu.Lock()
	q.push(head, written)
	q.mu.Unlock()
}

func (q *Queue) push(head uint16, written uint32) {
	slot := q.used + 4 + 8*uint64(q.usedIdx%q.size)
	// In range: Validate checked the used ring.
	q.mem.Write32(slot, uint32(head))
	q.mem.Write32(slot+4, written)
	q.usedIdx++
	q.mem.Store16(q.used+2, q.usedIdx)
	q.unsignaled = true
}

// Flush raises the used-buffer interrupt if chains were pushed since the
// last Flush and the driver asked to hear about them.
func (q *Queue) Flush() {
	q.mu.Lock()
	need := q.needInterrupt()
	q.mu.Unlock()
	if need && q.signal != nil {
		q.signal()
	}
}

// Complete is Push then Flush.
func (q *Queue) Complete(head uint16, written uint32) {
	q.mu.Lock()
	q.push(head, written)
	need := q.needInterrupt()
	q.mu.Unlock()
	if need && q.signal != nil {
		q.signal()
	}
}

// needInterrupt runs under mu, after the used index was published (the
// atomic store orders it before the loads of the driver's wish below).
func (q *Queue) needInterrupt() bool {
	if !q.unsignaled {
		return false
	}
	q.unsignaled = false
	if q.eventIdx {
		ue, err := q.mem.Load16(q.avail + 4 + 2*uint64(q.size))
		if err != nil {
			return true
		}
		old, nw := q.lastSignal, q.usedIdx
		q.lastSignal = nw
		return uint16(nw-ue-1) < uint16(nw-old)
	}
	f, err := q.mem.Load16(q.avail)
	return err != nil || f&AvailFNoInterrupt == 0
}

// SetNotify asks the driver to notify (on) or not (off) when it makes
// chains available. Only the consumer calls it.
func (q *Queue) SetNotify(on bool) {
	if q.eventIdx {
		if on {
			q.mem.Store16(q.used+4+8*uint64(q.size), q.lastAvail)
		}
		// Off: avail_event stays behind the driver, which then does not
		// notify (it notifies only when it passes avail_event).
		return
	}
	var f uint16
	if !on {
		f = UsedFNoNotify
	}
	q.mem.Store16(q.used, f)
}

// Notified is the channel the driver's notifications arrive on, for a
// consumer that waits for them together with other events (see Wait).
func (q *Queue) Notified() <-chan struct{} { return q.kick }

// Wait returns true when chains may be available and false when stop
// closes. It polls for q.Poll with notifications off, then turns them on,
// looks once more (the driver may have added a chain before it saw the
// flag) and sleeps until a notification. It returns with notifications
// off: the caller drains the ring and calls Wait again.
func (q *Queue) Wait(stop <-chan struct{}) bool {
	if q.Pending() {
		return true
	}
	if q.Poll > 0 {
		end := time.Now().Add(q.Poll)
		for spins := 0; ; spins++ {
			if q.Pending() {
				return true
			}
			if spins%64 == 63 {
				if time.Now().After(end) {
					break
				}
				runtime.Gosched()
			}
		}
	}
	q.SetNotify(true)
	defer q.SetNotify(false)
	for {
		if q.Pending() {
			return true
		}
		if q.dead.Load() {
			// Nothing to do until a reset stops us.
			<-stop
			return false
		}
		select {
		case <-q.kick:
		case <-stop:
			return false
		}
	}
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func le32(b []byte) uint32 { return uint32(le16(b)) | uint32(le16(b[2:]))<<16 }
func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }
