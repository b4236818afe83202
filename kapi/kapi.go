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
package kapi

import (
	"errors"
	"fmt"
	"sort"
	"sync"
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
