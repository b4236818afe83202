// Package mm holds the kernel's memory data structures: the physical frame
// allocator, x86-64 4-level page-table editing, and the set of virtual
// memory areas (VMAs) the program has mapped.
//
// Constraints (this code runs in trap context inside the guest):
//   - no allocation, no maps, no interfaces, no goroutines, no blocking;
//   - callers hold the kernel lock; nothing here is concurrent;
//   - physical memory is reached through Phys.Off: virtual = physical + Off.
//     In the guest Off is 0 (RAM is identity-mapped); in tests it points into
//     a Go byte slice standing in for RAM, so the same code is tested on Linux.
//
// Frames are never returned to the monitor; see Frames for how zeroing is
// kept off the fresh ones.
package mm

import (
	"errors"
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/mm/llfree"
)

const (
	PageSize = 4096
	HugeSize = 2 << 20

	// Page-table entry bits.
	PTEPresent = 1 << 0
	PTEWrite   = 1 << 1
	PTEUser    = 1 << 2
	PTEHuge    = 1 << 7
	PTEAddr    = 0x000f_ffff_ffff_f000

	// Leaf and directory entries all carry user+write: the kernel and the
	// program share CPL 3 (DESIGN §1.3).
	dirFlags = PTEPresent | PTEWrite | PTEUser
)

// ErrNoMemory reports that physical memory is exhausted.
var ErrNoMemory = errors.New("mm: out of physical memory")

// Phys translates physical addresses to pointers.
type Phys struct{ Off uintptr }

//go:nosplit
func (p Phys) ptr(pa uintptr) unsafe.Pointer {
	v := pa + p.Off
	return *(*unsafe.Pointer)(unsafe.Pointer(&v))
}

// Frames hands out physical frames from [lo, hi) through an LLFree
// allocator (kernel/mm/llfree: lock-free, per-CPU reservations, 2 MiB
// frames kept whole). Its metadata and a "dirty" bitmap sit at the bottom
// of the region. Invariant: a frame whose dirty bit is clear is zero. The
// monitor's fresh memory is zero and is never touched here (first touch
// costs ~8 µs under the shadow MMU); frames that were used and freed get
// their dirty bit, and are zeroed when a caller that needs zeroes takes
// them (page tables, demand paging). kapi's frame allocations take them as
// they are, like Linux's alloc_pages without __GFP_ZERO.
type Frames struct {
	Phys
	base, hi uintptr // frame 0 (2 MiB aligned) and end
	alloc    llfree.Allocator
	dirty    []uint64
	CPU      func() int // the current CPU (nil: 0)
	Total    uint64     // bytes of frames managed
}

// Init sets the region the allocator manages, for cpus CPUs.
func (f *Frames) Init(p Phys, lo, hi uintptr, cpus int) error {
	f.Phys = p
	lo = (lo + HugeSize - 1) &^ (HugeSize - 1)
	hi &^= HugeSize - 1
	if hi <= lo+HugeSize {
		return ErrNoMemory
	}
	n := uint64(hi-lo) / PageSize
	meta := llfree.MetaSize(n, cpus)
	dirtyBytes := uintptr((n + 63) / 64 * 8)
	used := (meta + dirtyBytes + HugeSize - 1) &^ (HugeSize - 1)
	f.base, f.hi = lo+used, hi
	n = uint64(f.hi-f.base) / PageSize
	f.dirty = unsafe.Slice((*uint64)(p.ptr(lo+meta)), (n+63)/64)
	clear(f.dirty)
	if err := f.alloc.Init(unsafe.Slice((*byte)(p.ptr(lo)), meta), n, cpus); err != nil {
		return err
	}
	f.Total = n * PageSize
	return nil
}

func (f *Frames) cpu() int {
	if f.CPU == nil {
		return 0
	}
	return f.CPU()
}

// Get returns 2^order contiguous frames, zeroed if zero is set.
func (f *Frames) Get(order int, zero bool) (uintptr, error) {
	fr, err := f.alloc.Get(f.cpu(), order)
	if err != nil {
		if err == llfree.ErrNoMemory {
			return 0, ErrNoMemory
		}
		return 0, err
	}
	pa := f.base + uintptr(fr)*PageSize
	if zero {
		for i := uint64(0); i < 1<<order; i++ {
			if f.takeDirty(fr + i) {
				clear((*[PageSize]byte)(f.ptr(pa + uintptr(i)*PageSize))[:])
			}
		}
	}
	return pa, nil
}

// takeDirty reports and clears frame i's dirty bit. Frames are owned by
// one caller at a time, but neighbours share the word: use atomics.
func (f *Frames) takeDirty(i uint64) bool {
	w, bit := &f.dirty[i/64], uint64(1)<<(i%64)
	for {
		old := atomic.LoadUint64(w)
		if old&bit == 0 {
			return false
		}
		if atomic.CompareAndSwapUint64(w, old, old&^bit) {
			return true
		}
	}
}

// Put returns 2^order frames at pa. The allocator detects double frees and
// wrong orders where its metadata can tell (llfree.ErrDoubleFree,
// ErrWrongOrder); nothing changes then.
func (f *Frames) Put(pa uintptr, order int) error {
	if pa < f.base || pa >= f.hi || (pa-f.base)%PageSize != 0 {
		return llfree.ErrInvalid
	}
	fr := uint64(pa-f.base) / PageSize
	for i := uint64(0); i < 1<<order && fr+i < uint64(len(f.dirty))*64; i++ {
		atomic.OrUint64(&f.dirty[(fr+i)/64], 1<<((fr+i)%64))
	}
	return f.alloc.Put(f.cpu(), fr, order)
}

// Alloc4K returns a zeroed 4 KiB frame.
func (f *Frames) Alloc4K() (uintptr, error) { return f.Get(0, true) }

// Alloc2M returns a zeroed, 2 MiB-aligned 2 MiB frame.
func (f *Frames) Alloc2M() (uintptr, error) { return f.Get(9, true) }

// Free4K returns a 4 KiB frame for reuse.
func (f *Frames) Free4K(pa uintptr) error { return f.Put(pa, 0) }

// Free2M returns a 2 MiB frame for reuse.
func (f *Frames) Free2M(pa uintptr) error { return f.Put(pa, 9) }

// Free reports the bytes still available.
func (f *Frames) Free() uint64 { return f.alloc.FreeFrames() * PageSize }

// Used reports the bytes handed out.
func (f *Frames) Used() uint64 { return f.Total - f.Free() }

// FreeHuge reports the free, whole 2 MiB frames.
func (f *Frames) FreeHuge() uint64 { return f.alloc.FreeHuge() }

// PageTable edits a 4-level x86-64 page table rooted at Root (physical).
// Writes counts every entry written: on the shadow-paging hosts we run on,
// each write to a live table is a trap, so callers should write few.
type PageTable struct {
	Phys
	Root   uintptr
	Frames *Frames
	Writes uint64
}

func (pt *PageTable) table(pa uintptr) *[512]uint64 { return (*[512]uint64)(pt.ptr(pa)) }

// next returns the table that entry e of t points to, creating it if asked.
func (pt *PageTable) next(t *[512]uint64, i uintptr, create bool) (*[512]uint64, error) {
	e := t[i]
	if e&PTEPresent == 0 {
		if !create {
			return nil, nil
		}
		pa, err := pt.Frames.Alloc4K()
		if err != nil {
			return nil, err
		}
		t[i] = uint64(pa) | dirFlags
		pt.Writes++
		return pt.table(pa), nil
	}
	if e&PTEHuge != 0 {
		return nil, errHugeInWay
	}
	return pt.table(uintptr(e & PTEAddr)), nil
}

var errHugeInWay = errors.New("mm: a huge mapping covers this range")

func idx(va uintptr, level uint) uintptr { return (va >> (12 + 9*level)) & 511 }

// Map4K maps the 4 KiB page at va to frame pa.
func (pt *PageTable) Map4K(va, pa uintptr) error {
	t := pt.table(pt.Root)
	var err error
	for level := uint(3); level > 0; level-- {
		if t, err = pt.next(t, idx(va, level), true); err != nil {
			return err
		}
	}
	t[idx(va, 0)] = uint64(pa) | dirFlags
	pt.Writes++
	return nil
}

// Map2M maps the 2 MiB page at va (aligned) to frame pa (aligned).
func (pt *PageTable) Map2M(va, pa uintptr) error {
	t := pt.table(pt.Root)
	var err error
	for level := uint(3); level > 1; level-- {
		if t, err = pt.next(t, idx(va, level), true); err != nil {
			return err
		}
	}
	if t[idx(va, 1)]&PTEPresent != 0 {
		return errHugeInWay
	}
	t[idx(va, 1)] = uint64(pa) | dirFlags | PTEHuge
	pt.Writes++
	return nil
}

// Lookup translates va. size is the mapping's page size (0 if unmapped).
// It is a walk by plain loads: the presence check of DESIGN §3.
//
//go:nosplit
func (pt *PageTable) Lookup(va uintptr) (pa uintptr, size uintptr) {
	t := pt.table(pt.Root)
	for level := uint(3); ; level-- {
		e := t[idx(va, level)]
		if e&PTEPresent == 0 {
			return 0, 0
		}
		if level == 0 {
			return uintptr(e&PTEAddr) | va&(PageSize-1), PageSize
		}
		if e&PTEHuge != 0 && level == 1 {
			return uintptr(e&PTEAddr)&^(HugeSize-1) | va&(HugeSize-1), HugeSize
		}
		t = pt.table(uintptr(e & PTEAddr))
	}
}

// Populate maps whatever is not yet mapped in [va, va+n) to zeroed frames.
// Whole aligned 2 MiB pieces get one huge frame (one entry written instead
// of 512); the rest gets 4 KiB frames. Pieces already mapped are left
// alone, contents included: demand paging calls this on a block that other
// threads may be using (callers wanting zeros call Zero first).
func (pt *PageTable) Populate(va, n uintptr) error {
	end := va + n
	for va < end {
		if _, size := pt.Lookup(va); size != 0 {
			va = (va | (size - 1)) + 1
			continue
		}
		if va&(HugeSize-1) == 0 && end-va >= HugeSize && pt.pdFree(va) {
			pa, err := pt.Frames.Alloc2M()
			if err == nil {
				if err := pt.Map2M(va, pa); err != nil {
					return err
				}
				va += HugeSize
				continue
			}
		}
		pa, err := pt.Frames.Alloc4K()
		if err != nil {
			return err
		}
		if err := pt.Map4K(va, pa); err != nil {
			return err
		}
		va += PageSize
	}
	return nil
}

// pdFree reports whether the 2 MiB slot at va has no mapping at all (no
// huge page and no page table beneath it).
func (pt *PageTable) pdFree(va uintptr) bool {
	t := pt.table(pt.Root)
	for level := uint(3); level > 1; level-- {
		e := t[idx(va, level)]
		if e&PTEPresent == 0 {
			return true
		}
		t = pt.table(uintptr(e & PTEAddr))
	}
	return t[idx(va, 1)]&PTEPresent == 0
}

// Zero clears whatever is mapped in [va, va+n); unmapped parts are skipped.
// This is MADV_DONTNEED's contract (later reads see zeros) without changing
// any page-table entry.
func (pt *PageTable) Zero(va, n uintptr) {
	end := va + n
	for va < end {
		pa, size := pt.Lookup(va)
		if size == 0 {
			va = pt.skipHole(va)
			continue
		}
		stop := (va | (size - 1)) + 1
		if stop > end {
			stop = end
		}
		clear(unsafe.Slice((*byte)(pt.ptr(pa)), stop-va))
		va = stop
	}
}

// Reclaimed is a frame taken out of the page table by Unmap.
type Reclaimed struct{ PA, Size uintptr }

// Unmap removes the mappings of whole pages inside [va, va+n) and reports
// their frames in out; parts of pages at the edges are zeroed in place. It
// stops when out is full and returns how many it filled and where to
// continue. The caller must flush every CPU's TLB before reusing the
// frames: until then a stale translation may still reach them.
func (pt *PageTable) Unmap(va, n uintptr, out []Reclaimed) (int, uintptr) {
	end := va + n
	k := 0
	for va < end && k < len(out) {
		pa, size := pt.Lookup(va)
		if size == 0 {
			va = pt.skipHole(va)
			continue
		}
		start := va &^ (size - 1)
		stop := start + size
		if start < va || stop > end {
			// A page only partly inside: zero its part.
			if stop > end {
				stop = end
			}
			clear(unsafe.Slice((*byte)(pt.ptr(pa)), stop-va))
			va = stop
			continue
		}
		pt.clearEntry(va, size)
		out[k] = Reclaimed{PA: pa, Size: size}
		k++
		va = stop
	}
	return k, va
}

// clearEntry zeroes the leaf entry mapping va (a page of the given size).
func (pt *PageTable) clearEntry(va, size uintptr) {
	t := pt.table(pt.Root)
	for level := uint(3); ; level-- {
		i := idx(va, level)
		if (level == 1 && size == HugeSize) || level == 0 {
			t[i] = 0
			pt.Writes++
			return
		}
		t = pt.table(uintptr(t[i] & PTEAddr))
	}
}

// skipHole returns the end of the unmapped piece at va: the next 4 KiB
// boundary, or the next 2 MiB boundary when no page table covers va.
func (pt *PageTable) skipHole(va uintptr) uintptr {
	size := uintptr(PageSize)
	if pt.pdFree(va &^ (HugeSize - 1)) {
		size = HugeSize
	}
	return (va | (size - 1)) + 1
}
