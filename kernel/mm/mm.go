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
// Frames are never returned to the monitor. Frames handed out fresh by the
// monitor are already zero (first touch costs ~8 µs under the shadow MMU, so
// they are never zeroed again); frames that come back through Free are zeroed
// before reuse.
package mm

import (
	"errors"
	"unsafe"
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

// Frames is a two-ended bump allocator over [lo, hi): 4 KiB frames grow up
// from lo, 2 MiB frames grow down from hi, so huge frames stay available
// until the two ends meet. Freed frames go on intrusive free lists (the next
// pointer lives in the free frame itself).
type Frames struct {
	Phys
	lo, hi       uintptr // remaining never-used region
	free4, free2 uintptr // free-list heads (physical), 0 = empty
	Used, Total  uint64  // bytes
}

// Init sets the region the allocator manages.
func (f *Frames) Init(p Phys, lo, hi uintptr) {
	f.Phys = p
	f.lo = (lo + PageSize - 1) &^ (PageSize - 1)
	f.hi = hi &^ (HugeSize - 1)
	f.Total = uint64(f.hi - f.lo)
}

// Alloc4K returns a zeroed 4 KiB frame.
func (f *Frames) Alloc4K() (uintptr, error) {
	if pa := f.free4; pa != 0 {
		f.free4 = *(*uintptr)(f.ptr(pa))
		clear((*[PageSize]byte)(f.ptr(pa))[:])
		f.Used += PageSize
		return pa, nil
	}
	if f.lo+PageSize > f.hi {
		return 0, ErrNoMemory
	}
	pa := f.lo
	f.lo += PageSize
	f.Used += PageSize
	return pa, nil
}

// Alloc2M returns a zeroed, 2 MiB-aligned 2 MiB frame.
func (f *Frames) Alloc2M() (uintptr, error) {
	if pa := f.free2; pa != 0 {
		f.free2 = *(*uintptr)(f.ptr(pa))
		clear((*[HugeSize]byte)(f.ptr(pa))[:])
		f.Used += HugeSize
		return pa, nil
	}
	top := f.hi &^ (HugeSize - 1)
	if top < HugeSize || top-HugeSize < f.lo {
		return 0, ErrNoMemory
	}
	f.hi = top - HugeSize
	f.Used += HugeSize
	return f.hi, nil
}

// Free4K returns a 4 KiB frame for reuse.
func (f *Frames) Free4K(pa uintptr) {
	*(*uintptr)(f.ptr(pa)) = f.free4
	f.free4 = pa
	f.Used -= PageSize
}

// Free2M returns a 2 MiB frame for reuse.
func (f *Frames) Free2M(pa uintptr) {
	*(*uintptr)(f.ptr(pa)) = f.free2
	f.free2 = pa
	f.Used -= HugeSize
}

// Free reports the bytes still available.
func (f *Frames) Free() uint64 { return f.Total - f.Used }

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
			size = PageSize
			if pt.pdFree(va &^ (HugeSize - 1)) {
				size = HugeSize
			}
			va = (va | (size - 1)) + 1
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
