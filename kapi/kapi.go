// Package kapi is CumulusDB's kernel API: the only way the database touches
// the machine (DESIGN §1 decision 6, §3). It defines the interfaces and
// types; implementations live in sub-packages and register themselves here,
// so one binary can carry several and pick the right one at run time (the
// same ELF runs as a Linux process and inside the unikernel image).
//
// Implementations:
//
//   - kapi/linux: a Linux process (mmap, madvise, mincore, files with
//     O_DIRECT, fdatasync). Always available on Linux.
//   - the unikernel implementation (added by the memory/device issues),
//     which registers with a higher priority and a probe that only succeeds
//     inside the image.
//
// Default returns the highest-priority registered implementation whose probe
// succeeds. Packages that need a kernel import kapi/linux for its side
// effect (or take a Kernel explicitly), so a plain Linux build always works.
//
// Invariants every implementation keeps:
//
//   - A Region's Mem slice stays valid (mapped, readable, writable after
//     Allocate) until Free: Discard drops the backing frames but never the
//     range, so a racing optimistic reader sees zeros, never a fault.
//   - Discard leaves the range reading as zeros.
//   - A BlockDevice's Flush makes every WriteAt that returned before it
//     durable; nothing is promised for writes still in flight.
//   - A BlockQueue's BlockFlush makes every write that completed before
//     the flush was submitted durable; requests in flight together are
//     unordered.
package kapi

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Region is a reserved range of virtual memory. Mem covers the whole range;
// the address of byte i is &Mem[i], so page n of a region of equal-sized
// pages is at Mem[n*size:], which is the add vmcache relies on.
type Region struct {
	Mem []byte
	// Handle is owned by the implementation that made the region.
	Handle any
}

// Len returns the size of the region in bytes.
func (r Region) Len() uintptr { return uintptr(len(r.Mem)) }

// Memory manages virtual ranges and their backing frames.
type Memory interface {
	// PageSize is the granularity of Allocate, Discard and Resident.
	PageSize() int
	// Reserve reserves size bytes of address space aligned to align (a power
	// of two, at least PageSize). The range is not usable until Allocate.
	Reserve(size, align uintptr) (Region, error)
	// Allocate makes [off, off+length) of r readable and writable. Frames
	// may be supplied eagerly or on first touch (Linux: on first touch).
	Allocate(r Region, off, length uintptr) error
	// Discard drops the frames behind [off, off+length) and keeps the range:
	// the next access reads zeros (vmcache's eviction).
	Discard(r Region, off, length uintptr) error
	// Free releases the range; r.Mem must not be used afterwards.
	Free(r Region) error
	// Resident reports whether the page holding byte off of r has a frame.
	Resident(r Region, off uintptr) (bool, error)
	// ResidentBatch fills out[i] with the residency of the page at
	// off+i*PageSize.
	ResidentBatch(r Region, off uintptr, out []bool) error
	// Stats reports memory statistics of the machine and this program.
	Stats() (MemStats, error)
}

// MemStats are memory statistics in bytes.
type MemStats struct {
	Total     uint64 // physical memory of the machine (or guest)
	Available uint64 // memory that can still be handed out
	Resident  uint64 // memory in use by this program
}

// BlockDevice is a byte-addressed view of a block device. Offsets and buffer
// lengths that are multiples of BlockSize, with buffers aligned to
// BlockSize, take the fast path (Linux: O_DIRECT); others are still correct.
type BlockDevice interface {
	// Name identifies the device in error messages.
	Name() string
	// BlockSize is the device's transfer granularity.
	BlockSize() int
	// Size is the number of bytes allocated to the device now.
	Size() int64
	// Grow allocates space so that Size() >= size. It is the only call that
	// may fail for lack of space: writes below Size() never do. A full
	// device returns an error wrapping syscall.ENOSPC.
	Grow(size int64) error
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes all completed writes durable.
	Flush() error
	Close() error
}

// BlockQueue is a block device as a submission/completion queue (DESIGN
// §3 "devices"): the caller submits batches of requests and collects
// completions itself, by polling or by waiting. In the image it is the
// virtio-blk queue, driven from the caller's goroutine: no system call,
// one notification (a VM exit) per batch at most, completions found in
// shared memory. On Linux it is a file (O_DIRECT where the file system
// allows it) served by worker goroutines doing pread/pwrite/fdatasync.
//
// Rules:
//   - Offsets and buffer lengths are multiples of BlockSize; buffers come
//     from AllocBuffer (in the image they must be physical memory the
//     device can reach; the Go heap is not) and are not touched while
//     their request is in flight. A request may use any BlockSize-aligned
//     part of a buffer.
//   - At most Depth requests are in flight; Submit accepts what fits.
//   - Requests in flight complete in any order. A BlockFlush makes every
//     write that completed before it was submitted durable.
//   - Every method is safe for concurrent use, but a completion goes to
//     whichever caller polls it: usually one goroutine owns a queue (the
//     database's I/O loop), or a dispatcher routes by Tag (NewQueueDevice).
type BlockQueue interface {
	// Name identifies the device in error messages.
	Name() string
	// BlockSize is the granularity of offsets and lengths.
	BlockSize() int
	// Depth is how many requests may be in flight at once.
	Depth() int
	// MaxTransfer is the largest Buf of one request.
	MaxTransfer() int
	// Size and Grow are as for BlockDevice: a fixed-size device (a disk
	// in the image) is wholly allocated, and Grow past it fails with an
	// error wrapping syscall.ENOSPC.
	Size() int64
	Grow(size int64) error
	// AllocBuffer returns n bytes (rounded up to whole pages) of I/O
	// memory aligned to at least BlockSize. Sizes up to 2 MiB always work.
	AllocBuffer(n int) ([]byte, error)
	// FreeBuffer returns a buffer from AllocBuffer.
	FreeBuffer(b []byte) error
	// Submit starts requests and returns how many it accepted: a prefix
	// of reqs. Fewer than len(reqs) with a nil error means the queue is
	// full: collect completions, then submit the rest. An invalid request
	// (misaligned, past the end of a fixed device, a write to a read-only
	// one) stops the batch: n counts those accepted before it and err
	// (wrapping syscall.EINVAL, EROFS, …) describes reqs[n].
	Submit(reqs []BlockRequest) (n int, err error)
	// Poll moves completed requests into out without blocking.
	Poll(out []BlockCompletion) int
	// Wait is Poll after waiting up to timeout (<0: no limit) for at
	// least one completion; 0 means none came in time.
	Wait(out []BlockCompletion, timeout time.Duration) int
	// Close abandons requests in flight and releases the device.
	Close() error
}

// BlockOp is the operation of a BlockRequest.
type BlockOp uint8

// Block operations.
const (
	BlockRead BlockOp = iota + 1
	BlockWrite
	BlockFlush
)

func (o BlockOp) String() string {
	switch o {
	case BlockRead:
		return "read"
	case BlockWrite:
		return "write"
	case BlockFlush:
		return "flush"
	}
	return fmt.Sprintf("BlockOp(%d)", uint8(o))
}

// BlockRequest is one request of a batch. Off and Buf are unused by
// BlockFlush. Tag is the caller's and comes back in the completion.
type BlockRequest struct {
	Op  BlockOp
	Off int64
	Buf []byte
	Tag uint64
}

// BlockCompletion reports a finished request. N is the bytes transferred:
// len(Buf) on success, except a read reaching past the end of a growable
// device's file, which is short. Err wraps syscall.EIO for a device
// error, syscall.EOPNOTSUPP for an operation the device refused.
type BlockCompletion struct {
	Tag uint64
	N   int
	Err error
}

// BlockQueueOpener is implemented by kernels that offer block queues.
type BlockQueueOpener interface {
	OpenBlockQueue(path string, opts BlockOptions) (BlockQueue, error)
}

// OpenBlockQueue opens path as a BlockQueue on k, or fails with
// ErrUnsupported.
func OpenBlockQueue(k Kernel, path string, opts BlockOptions) (BlockQueue, error) {
	o, ok := k.(BlockQueueOpener)
	if !ok {
		return nil, fmt.Errorf("kapi: %s has no block queues: %w", k.Name(), ErrUnsupported)
	}
	return o.OpenBlockQueue(path, opts)
}

// BlockOptions configure OpenBlock.
type BlockOptions struct {
	// Create creates the device's backing file if it does not exist.
	Create bool
	// Buffered disables direct I/O (Linux: O_DIRECT), so reads may be
	// served from the host's page cache.
	Buffered bool
}

// Kernel is one implementation of the kernel API.
type Kernel interface {
	// Name is the implementation's name ("linux", "unikernel").
	Name() string
	Memory() Memory
	// OpenBlock opens the block device or file at path.
	OpenBlock(path string, opts BlockOptions) (BlockDevice, error)
}

// ErrUnsupported is returned (wrapped) by operations a platform cannot do.
var ErrUnsupported = errors.New("kapi: unsupported on this platform")

type registration struct {
	kernel   Kernel
	priority int
	probe    func() bool
}

var (
	regMu sync.Mutex
	regs  []registration
)

// Register makes k available to Default. Among registered kernels whose probe
// returns true (a nil probe always does), Default picks the highest priority.
func Register(k Kernel, priority int, probe func() bool) {
	regMu.Lock()
	defer regMu.Unlock()
	regs = append(regs, registration{k, priority, probe})
	sort.SliceStable(regs, func(i, j int) bool { return regs[i].priority > regs[j].priority })
}

// Default returns the kernel this program runs on.
func Default() (Kernel, error) {
	regMu.Lock()
	defer regMu.Unlock()
	for _, r := range regs {
		if r.probe == nil || r.probe() {
			return r.kernel, nil
		}
	}
	return nil, fmt.Errorf("kapi: no kernel implementation registered (import kapi/linux)")
}

// Lookup returns the registered kernel with the given name.
func Lookup(name string) (Kernel, error) {
	regMu.Lock()
	defer regMu.Unlock()
	for _, r := range regs {
		if r.kernel.Name() == name {
			return r.kernel, nil
		}
	}
	return nil, fmt.Errorf("kapi: no kernel named %q", name)
}

// AlignedBuffer returns a zeroed buffer of n bytes whose first byte is
// aligned to align (a power of two), suitable for direct I/O. The Go heap
// does not move objects, so the alignment holds for the buffer's lifetime.
func AlignedBuffer(n, align int) []byte {
	b := make([]byte, n+align)
	off := 0
	if rem := int(addrOf(b) & uintptr(align-1)); rem != 0 {
		off = align - rem
	}
	return b[off : off+n : off+n]
}

// Aligned reports whether b starts at a multiple of align.
func Aligned(b []byte, align int) bool {
	return len(b) == 0 || addrOf(b)&uintptr(align-1) == 0
}

// Frames hands out physically contiguous memory through the direct map
// (DESIGN §3 "frames"): the database's analytical memory and its own
// caches, outside the Go heap. Kernels that can offer it implement this
// interface on their Kernel value; use AsFrames to get it.
type Frames interface {
	// FramesAlloc returns 2^order contiguous 4 KiB frames (order 0 = 4 KiB,
	// 9 = 2 MiB, 18 = 1 GiB where memory allows). Contents are
	// unspecified. A full machine returns an error wrapping ErrNoMemory.
	FramesAlloc(order int) ([]byte, error)
	// FramesFree returns frames from FramesAlloc with the same order.
	FramesFree(b []byte, order int) error
	// FreePhysMem and TotalPhysMem report the frame pool in bytes.
	FreePhysMem() uint64
	TotalPhysMem() uint64
}

// ErrNoMemory reports exhausted physical memory.
var ErrNoMemory = errors.New("kapi: out of memory")

// AsFrames returns k's frame allocator, or ErrUnsupported.
func AsFrames(k Kernel) (Frames, error) {
	if f, ok := k.(Frames); ok {
		return f, nil
	}
	return nil, fmt.Errorf("kapi: %s has no frame allocator: %w", k.Name(), ErrUnsupported)
}
