package unikernel

// Disks in the image: kapi.BlockQueue on the virtio-blk driver
// (kernel/dev/virtio/blk), and kapi.BlockDevice on top of that queue
// (kapi.NewQueueDevice). The driver runs in the caller's goroutines:
// Submit writes descriptors into shared memory and notifies the device
// at most once per batch (a VM exit), Poll reads the used ring, Wait
// polls and then sleeps on the device's interrupt word by futex. Buffers
// are frames from the kernel (direct map: address == physical address);
// the Go heap is not physical memory, so requests on the queue must use
// AllocBuffer memory (the BlockDevice copies through such buffers).
//
// A disk has one driver: a second open of the same disk fails with EBUSY
// until the first is closed. Paths that do not name a disk go to host
// shares as before.

import (
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio/blk"
)

// OpenBlock implements kapi.Kernel: "/dev/vda" or "vda" opens the first
// virtio disk (by its name in the boot page); other paths are files on
// host shares, which the monitor forwards (buffered: no O_DIRECT through
// shares).
func (k Kernel) OpenBlock(path string, opts kapi.BlockOptions) (kapi.BlockDevice, error) {
	if err := missingDisk(path); err != nil {
		return nil, err
	}
	if d, ok := diskName(path); ok {
		q, err := openDisk(d)
		if err != nil {
			return nil, err
		}
		return kapi.NewQueueDevice(q), nil
	}
	opts.Buffered = true
	return linux.Kernel{}.OpenBlock(path, opts)
}

// OpenBlockQueue implements kapi.BlockQueueOpener: a virtio disk, or a
// host-share file served by worker goroutines as on Linux.
func (k Kernel) OpenBlockQueue(path string, opts kapi.BlockOptions) (kapi.BlockQueue, error) {
	if err := missingDisk(path); err != nil {
		return nil, err
	}
	if d, ok := diskName(path); ok {
		return openDisk(d)
	}
	opts.Buffered = true
	return linux.Kernel{}.OpenBlockQueue(path, opts)
}

// missingDisk reports /dev/vdX paths that name no attached disk (rather
// than letting them fall through to host shares, where they never exist).
func missingDisk(path string) error {
	name, ok := strings.CutPrefix(path, "/dev/vd")
	if !ok || name == "" || strings.Contains(name, "/") {
		return nil
	}
	if _, ok := diskName(path); ok {
		return nil
	}
	return fmt.Errorf("kapi/unikernel: %s: no such virtio disk attached (cumulus run -disk): %w", path, syscall.ENODEV)
}

// diskName maps a path to an attached virtio block device.
func diskName(path string) (virtio.DeviceInfo, bool) {
	name := strings.TrimPrefix(path, "/dev/")
	if name == "" || strings.Contains(name, "/") {
		return virtio.DeviceInfo{}, false
	}
	d, err := virtio.Find(name)
	if err != nil || d.ID != boot.VirtioBlock {
		return virtio.DeviceInfo{}, false
	}
	return d, true
}

var (
	disksMu sync.Mutex
	disks   = map[string]bool{} // open disks
)

func openDisk(info virtio.DeviceInfo) (*diskQueue, error) {
	disksMu.Lock()
	defer disksMu.Unlock()
	if disks[info.Name] {
		return nil, fmt.Errorf("kapi/unikernel: /dev/%s is already open: %w", info.Name, syscall.EBUSY)
	}
	dma := virtio.Direct{Frames: Kernel{}, RAMSize: virtio.RAMSize()}
	dev, err := blk.Open(info.Transport(), info.Interrupt(), dma, blk.Config{})
	if err != nil {
		return nil, fmt.Errorf("kapi/unikernel: open /dev/%s: %w", info.Name, err)
	}
	n := dev.Depth() * 3
	q := &diskQueue{name: "/dev/" + info.Name, dev: dev, dma: dma,
		slots: make([]diskSlot, n), comps: make([]blk.Completion, n)}
	for i := n - 1; i >= 0; i-- {
		q.free = append(q.free, uint32(i))
	}
	q.maxXfer = min(dev.MaxSegments()*dev.MaxSegmentSize(), 2<<20)
	q.maxXfer -= q.maxXfer % dev.BlockSize()
	disks[info.Name] = true
	return q, nil
}

type diskSlot struct {
	tag uint64
	n   int
}

// diskQueue is kapi.BlockQueue on a virtio-blk device.
type diskQueue struct {
	name    string
	dev     *blk.Device
	dma     virtio.DMA
	maxXfer int

	mu     sync.Mutex
	slots  []diskSlot
	free   []uint32
	breq   []blk.Request
	segs   []blk.Segment
	comps  []blk.Completion
	failed []kapi.BlockCompletion // requests abandoned by a broken device
	closed bool
}

func (q *diskQueue) Name() string     { return q.name }
func (q *diskQueue) BlockSize() int   { return q.dev.BlockSize() }
func (q *diskQueue) Depth() int       { return q.dev.Depth() }
func (q *diskQueue) MaxTransfer() int { return q.maxXfer }
func (q *diskQueue) Size() int64      { return int64(q.dev.Capacity()) }

// Grow implements kapi.BlockQueue: a disk is wholly allocated.
func (q *diskQueue) Grow(size int64) error {
	if size > q.Size() {
		return fmt.Errorf("kapi/unikernel: grow %s to %d bytes past its capacity %d: %w", q.name, size, q.Size(), syscall.ENOSPC)
	}
	return nil
}

// AllocBuffer implements kapi.BlockQueue with kernel frames (at most
// 2 MiB, physically contiguous).
func (q *diskQueue) AllocBuffer(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("kapi/unikernel: %s: buffer of %d bytes: %w", q.name, n, syscall.EINVAL)
	}
	r, err := q.dma.Alloc(n)
	if err != nil {
		return nil, fmt.Errorf("kapi/unikernel: %s: buffer: %w", q.name, err)
	}
	return r.Buf[: (n+4095)&^4095 : len(r.Buf)], nil
}

// FreeBuffer implements kapi.BlockQueue.
func (q *diskQueue) FreeBuffer(b []byte) error {
	b = b[:cap(b)]
	phys, ok := q.dma.Phys(b)
	if !ok {
		return fmt.Errorf("kapi/unikernel: %s: free of a buffer not from AllocBuffer: %w", q.name, syscall.EINVAL)
	}
	return q.dma.Free(virtio.Region{Buf: b, Phys: phys})
}

// Submit implements kapi.BlockQueue.
func (q *diskQueue) Submit(reqs []kapi.BlockRequest) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, fmt.Errorf("kapi/unikernel: %s: submit: %w", q.name, syscall.EBADF)
	}
	q.breq, q.segs = q.breq[:0], q.segs[:0]
	var err error
	bs := int64(q.dev.BlockSize())
	for _, r := range reqs {
		if len(q.breq) == len(q.free) {
			break
		}
		br := blk.Request{Tag: uint64(q.free[len(q.free)-1-len(q.breq)])}
		switch r.Op {
		case kapi.BlockFlush:
			br.Op = blk.Flush
		case kapi.BlockRead, kapi.BlockWrite:
			br.Op = blk.Read
			if r.Op == kapi.BlockWrite {
				br.Op = blk.Write
			}
			if r.Off < 0 || r.Off%bs != 0 || len(r.Buf) > q.maxXfer {
				err = fmt.Errorf("kapi/unikernel: %s: %v of %d bytes at %d (block %d, max %d): %w", q.name, r.Op, len(r.Buf), r.Off, bs, q.maxXfer, syscall.EINVAL)
				break
			}
			phys, ok := q.dma.Phys(r.Buf)
			if !ok {
				err = fmt.Errorf("kapi/unikernel: %s: %v buffer is not from AllocBuffer: %w", q.name, r.Op, syscall.EINVAL)
				break
			}
			br.Sector = uint64(r.Off) / blk.SectorSize
			start := len(q.segs)
			for left, max := len(r.Buf), q.dev.MaxSegmentSize(); left > 0; {
				n := min(left, max)
				q.segs = append(q.segs, blk.Segment{Addr: phys, Len: uint32(n)})
				phys += uint64(n)
				left -= n
			}
			br.Segs = q.segs[start:len(q.segs):len(q.segs)]
		default:
			err = fmt.Errorf("kapi/unikernel: %s: %v: %w", q.name, r.Op, syscall.EINVAL)
		}
		if err != nil {
			break
		}
		q.breq = append(q.breq, br)
	}
	n, derr := q.dev.Submit(q.breq)
	for i := 0; i < n; i++ {
		s := q.free[len(q.free)-1]
		q.free = q.free[:len(q.free)-1]
		q.slots[s] = diskSlot{tag: reqs[i].Tag, n: len(reqs[i].Buf)}
	}
	if derr != nil {
		return n, fmt.Errorf("kapi/unikernel: %s: %w", q.name, derr)
	}
	if n < len(q.breq) {
		return n, nil // full
	}
	return n, err
}

// Poll implements kapi.BlockQueue.
func (q *diskQueue) Poll(out []kapi.BlockCompletion) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0
	}
	n := copy(out, q.failed)
	q.failed = q.failed[:copy(q.failed, q.failed[n:])]
	if n == len(out) {
		return n
	}
	k, err := q.dev.Poll(q.comps[:min(len(out)-n, len(q.comps))])
	for _, c := range q.comps[:k] {
		s := &q.slots[c.Tag]
		bc := kapi.BlockCompletion{Tag: s.tag, N: s.n, Err: c.Err}
		if c.Err != nil {
			bc.N = 0
		}
		out[n] = bc
		n++
		q.free = append(q.free, uint32(c.Tag))
	}
	if err != nil {
		// The device broke the protocol: nothing in flight will complete.
		q.abandon(fmt.Errorf("kapi/unikernel: %s: %w", q.name, err))
	}
	return n
}

// abandon fails every request in flight. q.mu held.
func (q *diskQueue) abandon(err error) {
	inFree := make([]bool, len(q.slots))
	for _, s := range q.free {
		inFree[s] = true
	}
	for i := range q.slots {
		if !inFree[i] {
			q.failed = append(q.failed, kapi.BlockCompletion{Tag: q.slots[i].tag, Err: err})
			q.free = append(q.free, uint32(i))
		}
	}
}

// Wait implements kapi.BlockQueue: poll, then sleep on the interrupt.
func (q *diskQueue) Wait(out []kapi.BlockCompletion, timeout time.Duration) int {
	if n := q.Poll(out); n > 0 {
		return n
	}
	q.mu.Lock()
	closed := q.closed
	q.mu.Unlock()
	if closed {
		return 0
	}
	q.dev.Wait(timeout)
	return q.Poll(out)
}

// Close implements kapi.BlockQueue: the device is reset and its memory
// freed; the disk may be opened again.
func (q *diskQueue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	err := q.dev.Close()
	disksMu.Lock()
	delete(disks, strings.TrimPrefix(q.name, "/dev/"))
	disksMu.Unlock()
	if err != nil {
		return fmt.Errorf("kapi/unikernel: close %s: %w", q.name, err)
	}
	return nil
}
