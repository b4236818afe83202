// Package blk is a virtio-blk driver (virtio spec §5.2) with many requests
// in flight: Submit puts a batch of requests on the device's one queue and
// notifies it once; Poll collects completions; Wait polls, then sleeps on
// the device's interrupt.
//
// Design: each request is a descriptor chain of a 16-byte header
// (device-readable), the data segments (physical addresses the caller
// supplies: DMA memory), and a one-byte status (device-writable). Headers
// and status bytes live in one DMA region, one slot per request in
// flight, taken from a free list; the slot index is the chain's token.
// The driver never copies data: callers hand it physical segments.
//
// Invariants: a slot is free iff no chain with its token is in flight; at
// most Depth requests are in flight; requests past the capacity or
// misaligned never reach the device; writes to a read-only device fail
// with EROFS before submission.
//
// Context: program goroutines (kapi's block queue, or a test), never trap
// context. All methods are safe for concurrent use.
package blk

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
)

// DeviceID is virtio-blk's device ID.
const DeviceID = 2

// SectorSize is the unit of virtio-blk addresses and lengths.
const SectorSize = 512

// Feature bits (§5.2.3).
const (
	FSizeMax = 1 << 1
	FSegMax  = 1 << 2
	FRO      = 1 << 5
	FBlkSize = 1 << 6
	FFlush   = 1 << 9
)

// Request types and status values (§5.2.6).
const (
	typeIn    = 0
	typeOut   = 1
	typeFlush = 4

	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2
)

// Configuration space offsets.
const (
	cfgCapacity = 0
	cfgSizeMax  = 8
	cfgSegMax   = 12
	cfgBlkSize  = 20
)

// Op is a request's operation.
type Op uint8

const (
	Read Op = iota + 1
	Write
	Flush
)

func (o Op) String() string {
	switch o {
	case Read:
		return "read"
	case Write:
		return "write"
	case Flush:
		return "flush"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Segment is Len bytes of DMA memory at physical address Addr.
type Segment struct {
	Addr uint64
	Len  uint32
}

// Request is one block request. Sector counts 512-byte sectors; the
// segments' total length must be a multiple of SectorSize (and of
// BlockSize). Flush takes no segments. Tag comes back in the Completion.
type Request struct {
	Op     Op
	Sector uint64
	Segs   []Segment
	Tag    uint64
}

// Completion reports a finished request: Err is nil, or wraps
// syscall.EIO (VIRTIO_BLK_S_IOERR, or a broken device) or
// syscall.EOPNOTSUPP (VIRTIO_BLK_S_UNSUPP).
type Completion struct {
	Tag uint64
	Err error
}

// Config tunes Open. Zero values take defaults.
type Config struct {
	// QueueSize is the number of descriptors (default: the device's
	// maximum, capped at 256).
	QueueSize int
}

const slotSize = 32 // 16-byte header, status byte at 16, padding

type slot struct {
	tag    uint64
	op     Op
	sector uint64
}

// Device is an open virtio-blk device.
type Device struct {
	vd       *virtio.Device
	q        *virtio.Queue
	dma      virtio.DMA
	capacity uint64 // bytes
	blkSize  int
	sizeMax  uint32
	segMax   int
	readOnly bool
	flush    bool

	mu     sync.Mutex
	hdrs   virtio.Region
	slots  []slot
	free   []uint16
	local  []Completion // completed without the device (flush on a write-through device)
	used   []virtio.Used
	closed bool
}

// Open initialises the virtio-blk device behind t: reset, feature
// negotiation (FLUSH, RO, BLK_SIZE, SEG_MAX, SIZE_MAX, EVENT_IDX), one
// request queue with memory from dma, DRIVER_OK.
func Open(t virtio.Transport, irq virtio.Interrupt, dma virtio.DMA, cfg Config) (*Device, error) {
	vd, err := virtio.Open(t, irq, DeviceID, FSizeMax|FSegMax|FRO|FBlkSize|FFlush|virtio.FEventIdx)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	d := &Device{vd: vd, dma: dma, blkSize: SectorSize, sizeMax: 1 << 20, segMax: 1}
	d.capacity = vd.Config64(cfgCapacity) * SectorSize
	d.readOnly = vd.Has(FRO)
	d.flush = vd.Has(FFlush)
	if vd.Has(FBlkSize) {
		if bs := int(vd.Config32(cfgBlkSize)); bs >= SectorSize && bs&(bs-1) == 0 && bs <= 64<<10 {
			d.blkSize = bs
		}
	}
	if vd.Has(FSizeMax) {
		if m := vd.Config32(cfgSizeMax); m >= 4096 {
			d.sizeMax = m
		}
	}
	if vd.Has(FSegMax) {
		if m := int(vd.Config32(cfgSegMax)); m >= 1 {
			d.segMax = m
		}
	}
	q, err := virtio.NewQueue(vd, 0, cfg.QueueSize, dma)
	if err != nil {
		vd.Close()
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	d.q = q
	d.segMax = min(d.segMax, q.Size()-2)
	n := q.Size() // at most this many chains (each needs ≥ 2 descriptors, so slots never run out first)
	d.hdrs, err = dma.Alloc(n * slotSize)
	if err != nil {
		vd.Close()
		return nil, fmt.Errorf("virtio-blk: request headers: %w", err)
	}
	d.slots = make([]slot, n)
	d.free = make([]uint16, n)
	for i := range d.free {
		d.free[i] = uint16(n - 1 - i)
	}
	d.used = make([]virtio.Used, n)
	if err := vd.Ready(); err != nil {
		d.Close()
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	return d, nil
}

// Capacity returns the device's size in bytes.
func (d *Device) Capacity() uint64 { return d.capacity }

// BlockSize returns the device's block size (VIRTIO_BLK_F_BLK_SIZE, else
// 512): offsets and lengths are multiples of it.
func (d *Device) BlockSize() int { return d.blkSize }

// ReadOnly reports VIRTIO_BLK_F_RO.
func (d *Device) ReadOnly() bool { return d.readOnly }

// CanFlush reports VIRTIO_BLK_F_FLUSH. Without it the device writes
// through and Flush completes at once.
func (d *Device) CanFlush() bool { return d.flush }

// MaxSegments is the most segments one request may have.
func (d *Device) MaxSegments() int { return d.segMax }

// MaxSegmentSize is the largest segment (VIRTIO_BLK_F_SIZE_MAX).
func (d *Device) MaxSegmentSize() int { return int(d.sizeMax) }

// Depth is the most requests that can be in flight with one segment each.
func (d *Device) Depth() int { return d.q.Size() / 3 }

// QueueStats returns the request queue's counters.
func (d *Device) QueueStats() virtio.QueueStats { return d.q.Stats() }

// Features returns the negotiated feature bits.
func (d *Device) Features() uint64 { return d.vd.Features() }

func (d *Device) check(r *Request) error {
	if r.Op == Flush {
		if len(r.Segs) != 0 {
			return fmt.Errorf("virtio-blk: flush with data: %w", syscall.EINVAL)
		}
		return nil
	}
	if r.Op != Read && r.Op != Write {
		return fmt.Errorf("virtio-blk: %v: %w", r.Op, syscall.EINVAL)
	}
	if r.Op == Write && d.readOnly {
		return fmt.Errorf("virtio-blk: write to a read-only device: %w", syscall.EROFS)
	}
	if len(r.Segs) == 0 || len(r.Segs) > d.segMax {
		return fmt.Errorf("virtio-blk: %v with %d segments (max %d): %w", r.Op, len(r.Segs), d.segMax, syscall.EINVAL)
	}
	var total uint64
	for _, s := range r.Segs {
		if s.Len == 0 || s.Len > d.sizeMax {
			return fmt.Errorf("virtio-blk: %v segment of %d bytes (max %d): %w", r.Op, s.Len, d.sizeMax, syscall.EINVAL)
		}
		total += uint64(s.Len)
	}
	off := r.Sector * SectorSize
	if total%uint64(d.blkSize) != 0 || off%uint64(d.blkSize) != 0 {
		return fmt.Errorf("virtio-blk: %v of %d bytes at %d: not in %d-byte blocks: %w", r.Op, total, off, d.blkSize, syscall.EINVAL)
	}
	if off+total > d.capacity || off+total < off {
		return fmt.Errorf("virtio-blk: %v of %d bytes at %d: past the end (%d bytes): %w", r.Op, total, off, d.capacity, syscall.EINVAL)
	}
	return nil
}

// Submit puts requests on the queue and notifies the device once (if it
// wants notifications). It returns how many were accepted, a prefix of
// reqs: fewer than len(reqs) with a nil error means the queue is full
// (reap completions first). An invalid request stops the batch: n counts
// the ones accepted before it and err says what is wrong with reqs[n].
func (d *Device) Submit(reqs []Request) (n int, err error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return 0, fmt.Errorf("virtio-blk: submit: %w", syscall.EBADF)
	}
	var bufs [64]virtio.Buffer
	for n < len(reqs) {
		r := &reqs[n]
		if err = d.check(r); err != nil {
			break
		}
		if r.Op == Flush && !d.flush {
			d.local = append(d.local, Completion{Tag: r.Tag})
			n++
			continue
		}
		if len(d.free) == 0 {
			break
		}
		s := d.free[len(d.free)-1]
		hdr := d.hdrs.Buf[int(s)*slotSize:]
		typ := uint32(typeIn)
		switch r.Op {
		case Write:
			typ = typeOut
		case Flush:
			typ = typeFlush
		}
		*(*uint32)(unsafe.Pointer(&hdr[0])) = typ
		*(*uint32)(unsafe.Pointer(&hdr[4])) = 0
		sector := r.Sector
		if r.Op == Flush {
			sector = 0
		}
		*(*uint64)(unsafe.Pointer(&hdr[8])) = sector
		hdr[16] = 0xff // not yet written by the device
		phys := d.hdrs.Phys + uint64(s)*slotSize
		chain := append(bufs[:0], virtio.Buffer{Addr: phys, Len: 16})
		for _, sg := range r.Segs {
			chain = append(chain, virtio.Buffer{Addr: sg.Addr, Len: sg.Len, DeviceWrites: r.Op == Read})
		}
		chain = append(chain, virtio.Buffer{Addr: phys + 16, Len: 1, DeviceWrites: true})
		if e := d.q.Add(chain, uint64(s)); e != nil {
			if !errors.Is(e, virtio.ErrQueueFull) {
				err = fmt.Errorf("virtio-blk: submit: %w", e)
			}
			break
		}
		d.free = d.free[:len(d.free)-1]
		d.slots[s] = slot{tag: r.Tag, op: r.Op, sector: r.Sector}
		n++
	}
	d.mu.Unlock()
	d.q.Kick()
	return n, err
}

// Poll moves finished requests into out without blocking and returns how
// many. A broken device (a bad used entry) returns an error wrapping
// syscall.EIO; requests still in flight then never complete.
func (d *Device) Poll(out []Completion) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, fmt.Errorf("virtio-blk: poll: %w", syscall.EBADF)
	}
	n := copy(out, d.local)
	d.local = d.local[:copy(d.local, d.local[n:])]
	if n == len(out) || !d.q.Pending() {
		return n, nil
	}
	k, err := d.q.Reap(d.used[:min(len(out)-n, len(d.used))])
	for _, u := range d.used[:k] {
		s := uint16(u.Token)
		sl := d.slots[s]
		var cerr error
		switch st := d.hdrs.Buf[int(s)*slotSize+16]; st {
		case statusOK:
		case statusIOErr:
			cerr = fmt.Errorf("virtio-blk: %v at sector %d: %w", sl.op, sl.sector, syscall.EIO)
		case statusUnsupp:
			cerr = fmt.Errorf("virtio-blk: %v at sector %d: unsupported: %w", sl.op, sl.sector, syscall.EOPNOTSUPP)
		default:
			cerr = fmt.Errorf("virtio-blk: %v at sector %d: status %d: %w", sl.op, sl.sector, st, syscall.EIO)
		}
		out[n] = Completion{Tag: sl.tag, Err: cerr}
		n++
		d.free = append(d.free, s)
	}
	if err != nil {
		return n, fmt.Errorf("virtio-blk: %w", err)
	}
	return n, nil
}

// Pending reports whether Poll would find something (one shared-memory
// load, no lock for the device part).
func (d *Device) Pending() bool {
	d.mu.Lock()
	local := len(d.local) > 0
	d.mu.Unlock()
	return local || d.q.Pending()
}

// Wait blocks until Poll would find something or timeout passes (<0:
// none): it polls the used ring for a while, then sleeps on the device's
// interrupt. It reports whether something is ready.
func (d *Device) Wait(timeout time.Duration) bool {
	if d.Pending() {
		return true
	}
	return d.q.Wait(timeout)
}

// SetSpinTime sets how long Wait polls before it sleeps.
func (d *Device) SetSpinTime(t time.Duration) { d.q.SpinTime = t }

// Close resets the device (it stops touching memory) and frees the
// queue and header memory. Requests in flight are abandoned.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.vd.Close()
	if d.hdrs.Buf != nil {
		if e := d.dma.Free(d.hdrs); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return fmt.Errorf("virtio-blk: close: %w", err)
	}
	return nil
}
