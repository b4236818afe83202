package kernel

// mmap, munmap and madvise for the Go runtime's heap. Constraints: trap
// context (cpu.go); takes klock.
//
// Anonymous memory is mapped eagerly when committed (2 MiB pages where the
// range allows, one page-table write each instead of 512) and address-space
// reservations (PROT_NONE) take no frames. MADV_DONTNEED and munmap zero the
// range in place: the Go 1.26 heap relies on scavenged memory reading as
// zero, and keeping the frames mapped needs no TLB flush. Returning frames
// and demand paging come with the memory-subsystem issue.

import (
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/mm"
)

const (
	mapFixed          = 0x10
	mapAnonymous      = 0x20
	mapFixedNoReplace = 0x100000

	kernelImageBase = 0x4000000000
	kernelImageEnd  = kernelImageBase + 1<<30
	mmapTop         = 0x7fff_0000_0000
)

var mmapLo uintptr

func initMmap() {
	// The identity-mapped RAM (and the image in it) and the kernel's own
	// image are never handed out.
	mmapLo = (uintptr(bi.RAMSize) + 1<<30 - 1) &^ (1<<30 - 1)
	if mmapLo < 4<<30 {
		mmapLo = 4 << 30
	}
	vmas.Insert(0, mmapLo)
	vmas.Insert(kernelImageBase, kernelImageEnd)
}

func sysMmapImpl(addr, length, prot, flags uintptr, fd int32, off uintptr) int64 {
	if length == 0 {
		return -_EINVAL
	}
	if flags&mapAnonymous == 0 {
		return -_ENODEV // no files to map yet
	}
	n := (length + mm.PageSize - 1) &^ (mm.PageSize - 1)
	klock.lock()
	defer klock.unlock()
	var va uintptr
	switch {
	case flags&mapFixed != 0:
		if addr&(mm.PageSize-1) != 0 || addr < mmapLo || addr+n > mmapTop {
			return -_EINVAL
		}
		va = addr
	case addr != 0 && addr&(mm.PageSize-1) == 0 && addr >= mmapLo && addr+n <= mmapTop && vmas.Free(addr, addr+n):
		va = addr
	case flags&mapFixedNoReplace != 0:
		return -_EEXIST
	default:
		align := uintptr(mm.PageSize)
		if n >= mm.HugeSize {
			align = mm.HugeSize
		}
		va = vmas.FindGap(n, align, mmapLo, mmapTop)
		if va == 0 {
			return -_ENOMEM
		}
	}
	if !vmas.Insert(va, va+n) {
		return -_ENOMEM
	}
	if prot != 0 {
		if err := pt.Populate(va, n); err != nil {
			stats.FramesUsed = frames.Used
			return -_ENOMEM
		}
	} else {
		pt.Zero(va, n)
	}
	stats.FramesUsed = frames.Used
	stats.PTWrites = pt.Writes
	return int64(va)
}

func sysMunmapImpl(addr, length uintptr) int64 {
	if addr&(mm.PageSize-1) != 0 || length == 0 {
		return -_EINVAL
	}
	n := (length + mm.PageSize - 1) &^ (mm.PageSize - 1)
	if addr < mmapLo {
		return -_EINVAL
	}
	klock.lock()
	defer klock.unlock()
	pt.Zero(addr, n)
	vmas.Remove(addr, addr+n)
	return 0
}

func sysMadviseImpl(addr, length uintptr, advice int) int64 {
	switch advice {
	case 4, 8: // MADV_DONTNEED, MADV_FREE
		if addr < boot.NullGuardEnd {
			return -_EINVAL
		}
		klock.lock()
		pt.Zero(addr, length)
		klock.unlock()
	}
	return 0
}
