// Package virtiotest is a minimal virtio 1.x MMIO driver written from the
// specification, for testing device models over a byte-slice memory
// without a guest. It behaves as a well-behaved guest driver would
// (including the notification rules), and lets tests break the rules on
// purpose by writing rings and descriptors directly.
package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cumulusdb/cumulus/vmm/virtio"
)

// Window is a device's register window (a *virtio.Transport, or a path
// to one through a monitor's MMIO dispatch).
type Window interface {
	MMIORead(off uint64, data []byte)
	MMIOWrite(off uint64, data []byte)
}

// Driver drives one device.
type Driver struct {
	T   Window
	Mem virtio.Memory
	Q   []*DQueue

	mu   sync.Mutex
	next uint64 // bump allocator
	// Features negotiated.
	Features uint64
}

// DQueue is the driver side of one split virtqueue.
type DQueue struct {
	d                 *Driver
	Index             int
	Size              uint16
	Desc, Avail, Used uint64
	EventIdx          bool

	mu       sync.Mutex
	free     []uint16
	availIdx uint16
	lastUsed uint16
	inflight map[uint16][]uint16
	Kicks    int
}

// New makes a driver whose allocations start at base.
func New(t Window, mem virtio.Memory, base uint64) *Driver {
	return &Driver{T: t, Mem: mem, next: base}
}

// Alloc returns n zeroed bytes of guest memory aligned to align.
func (d *Driver) Alloc(n, align uint64) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := (d.next + align - 1) &^ (align - 1)
	d.next = a + n
	if b, ok := d.Mem.Slice(a, n); ok {
		clear(b)
	} else {
		panic("virtiotest: out of memory")
	}
	return a
}

func (d *Driver) Read(off uint64) uint32 {
	var b [4]byte
	d.T.MMIORead(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *Driver) Write(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.T.MMIOWrite(off, b[:])
}

// Init resets the device and runs the initialisation sequence (§3.1.1),
// accepting want ∩ offered, with queues of qsize entries (0: the maximum).
func (d *Driver) Init(want uint64, qsize uint16) error {
	if d.Read(virtio.RegMagicValue) != virtio.MagicValue || d.Read(virtio.RegVersion) != virtio.Version {
		return errors.New("virtiotest: not a virtio-mmio v2 device")
	}
	d.Write(virtio.RegStatus, 0)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge)
	d.Write(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	var offered uint64
	for sel := uint32(0); sel < 2; sel++ {
		d.Write(virtio.RegDeviceFeaturesSel, sel)
		offered |= uint64(d.Read(virtio.RegDeviceFeatures)) << (32 * sel)
	}
	d.Features = offered & want
	for sel := uint32(0); sel < 2; sel++ {
		d.Write(virtio.RegDriverFeaturesSel, sel)
		d.Write(virtio.RegDriverFeatures, uint32(d.Features>>(32*sel)))
	}
	st := uint32(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	d.Write(virtio.RegStatus, st)
	if d.Read(virtio.RegStatus)&virtio.StatusFeaturesOK == 0 {
		return fmt.Errorf("virtiotest: device refused features %#x", d.Features)
	}
	d.Q = nil
	for i := 0; ; i++ {
		d.Write(virtio.RegQueueSel, uint32(i))
		max := d.Read(virtio.RegQueueNumMax)
		if max == 0 {
			break
		}
		n := uint16(max)
		if qsize != 0 && qsize < n {
			n = qsize
		}
		q := &DQueue{d: d, Index: i, Size: n, EventIdx: d.Features&virtio.FRingEventIdx != 0}
		q.Desc = d.Alloc(virtio.DescSize*uint64(n), 16)
		q.Avail = d.Alloc(virtio.AvailSize(n), 2)
		q.Used = d.Alloc(virtio.UsedSize(n), 4)
		for j := range n {
			q.free = append(q.free, j)
		}
		d.Write(virtio.RegQueueNum, uint32(n))
		d.Write(virtio.RegQueueDescLow, uint32(q.Desc))
		d.Write(virtio.RegQueueDescHigh, uint32(q.Desc>>32))
		d.Write(virtio.RegQueueDriverLow, uint32(q.Avail))
		d.Write(virtio.RegQueueDriverHigh, uint32(q.Avail>>32))
		d.Write(virtio.RegQueueDeviceLow, uint32(q.Used))
		d.Write(virtio.RegQueueDeviceHigh, uint32(q.Used>>32))
		d.Write(virtio.RegQueueReady, 1)
		if d.Read(virtio.RegQueueReady) != 1 {
			return fmt.Errorf("virtiotest: queue %d refused", i)
		}
		d.Q = append(d.Q, q)
	}
	d.Write(virtio.RegStatus, st|virtio.StatusDriverOK)
	if s := d.Read(virtio.RegStatus); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		return fmt.Errorf("virtiotest: device status %#x after DRIVER_OK", s)
	}
	return nil
}

// Buf is one buffer of a chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Add puts a chain of bufs on the avail ring and returns its head. It
// does not notify.
func (q *DQueue) Add(bufs ...Buf) (uint16, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(bufs) == 0 || len(bufs) > len(q.free) {
		return 0, errors.New("virtiotest: no free descriptors")
	}
	ids := q.free[:len(bufs)]
	q.free = q.free[len(bufs):]
	m := q.d.Mem
	for i, b := range bufs {
		a := q.Desc + virtio.DescSize*uint64(ids[i])
		var flags uint16
		if b.Write {
			flags |= virtio.DescFWrite
		}
		var next uint16
		if i+1 < len(bufs) {
			flags |= virtio.DescFNext
			next = ids[i+1]
		}
		m.Write64(a, b.Addr)
		m.Write32(a+8, b.Len)
		m.Write16(a+12, flags)
		m.Write16(a+14, next)
	}
	head := ids[0]
	q.chains(head, ids)
	m.Write16(q.Avail+4+2*uint64(q.availIdx%q.Size), head)
	q.availIdx++
	m.Store16(q.Avail+2, q.availIdx)
	return head, nil
}

// chains remembers a chain's descriptors, to free them on completion.
// Runs under mu.
func (q *DQueue) chains(head uint16, ids []uint16) {
	if q.inflight == nil {
		q.inflight = map[uint16][]uint16{}
	}
	q.inflight[head] = append([]uint16(nil), ids...)
}

// AddRaw publishes head on the avail ring as is (for malformed chains the
// test wrote itself). The descriptors stay owned by the test.
func (q *DQueue) AddRaw(head uint16) {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := q.d.Mem
	m.Write16(q.Avail+4+2*uint64(q.availIdx%q.Size), head)
	q.availIdx++
	m.Store16(q.Avail+2, q.availIdx)
}

// WriteDesc writes descriptor i directly.
func (q *DQueue) WriteDesc(i uint16, addr uint64, ln uint32, flags, next uint16) {
	a := q.Desc + virtio.DescSize*uint64(i)
	q.d.Mem.Write64(a, addr)
	q.d.Mem.Write32(a+8, ln)
	q.d.Mem.Write16(a+12, flags)
	q.d.Mem.Write16(a+14, next)
}

// TakeFree removes n descriptors from the free list for raw use.
func (q *DQueue) TakeFree(n int) []uint16 {
	q.mu.Lock()
	defer q.mu.Unlock()
	ids := append([]uint16(nil), q.free[:n]...)
	q.free = q.free[n:]
	return ids
}

// NeedKick reports whether the device asked to be notified of the chains
// added since old (the avail index before them).
func (q *DQueue) NeedKick(old uint16) bool {
	m := q.d.Mem
	if q.EventIdx {
		ev, _ := m.Load16(q.Used + 4 + 8*uint64(q.Size))
		q.mu.Lock()
		nw := q.availIdx
		q.mu.Unlock()
		return uint16(nw-ev-1) < uint16(nw-old)
	}
	f, _ := m.Load16(q.Used)
	return f&virtio.UsedFNoNotify == 0
}

// AvailIdx is the driver's avail index.
func (q *DQueue) AvailIdx() uint16 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.availIdx
}

// Kick notifies the device.
func (q *DQueue) Kick() {
	q.mu.Lock()
	q.Kicks++
	q.mu.Unlock()
	q.d.Write(virtio.RegQueueNotify, uint32(q.Index))
}

// KickIfNeeded notifies the device if it asked for it since old.
func (q *DQueue) KickIfNeeded(old uint16) {
	if q.NeedKick(old) {
		q.Kick()
	}
}

// Used is one completion.
type Used struct {
	ID  uint16
	Len uint32
}

// Poll returns the completions the device published since the last call,
// freeing their descriptors.
func (q *DQueue) Poll() []Used {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := q.d.Mem
	idx, _ := m.Load16(q.Used + 2)
	var out []Used
	for ; q.lastUsed != idx; q.lastUsed++ {
		e := q.Used + 4 + 8*uint64(q.lastUsed%q.Size)
		id, _ := m.Read32(e)
		ln, _ := m.Read32(e + 4)
		out = append(out, Used{uint16(id), ln})
		if ids, ok := q.inflight[uint16(id)]; ok {
			delete(q.inflight, uint16(id))
			q.free = append(q.free, ids...)
		}
	}
	if q.EventIdx {
		// Interrupt at the next completion.
		m.Store16(q.Avail+4+2*uint64(q.Size), q.lastUsed)
	}
	return out
}

// SetNoInterrupt sets or clears VRING_AVAIL_F_NO_INTERRUPT.
func (q *DQueue) SetNoInterrupt(on bool) {
	var f uint16
	if on {
		f = virtio.AvailFNoInterrupt
	}
	q.d.Mem.Store16(q.Avail, f)
}

// SetUsedEvent writes used_event (EVENT_IDX).
func (q *DQueue) SetUsedEvent(v uint16) { q.d.Mem.Store16(q.Avail+4+2*uint64(q.Size), v) }

// Wait polls until n completions arrived or the timeout passed.
func (q *DQueue) Wait(n int, timeout time.Duration) ([]Used, error) {
	var out []Used
	end := time.Now().Add(timeout)
	for len(out) < n {
		out = append(out, q.Poll()...)
		if len(out) >= n {
			break
		}
		if time.Now().After(end) {
			return out, fmt.Errorf("virtiotest: queue %d: %d of %d completions after %v", q.Index, len(out), n, timeout)
		}
		time.Sleep(20 * time.Microsecond)
	}
	return out, nil
}

// Submit adds a chain, notifies if the device asked for it, and waits for
// its completion.
func (q *DQueue) Submit(timeout time.Duration, bufs ...Buf) (Used, error) {
	old := q.AvailIdx()
	head, err := q.Add(bufs...)
	if err != nil {
		return Used{}, err
	}
	q.KickIfNeeded(old)
	u, err := q.Wait(1, timeout)
	if err != nil {
		return Used{}, err
	}
	if u[0].ID != head {
		return u[0], fmt.Errorf("virtiotest: completion of %d, expected %d", u[0].ID, head)
	}
	return u[0], nil
}
