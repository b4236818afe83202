package kernel

// mmap, munmap and madvise for the Go runtime's heap. Constraints: trap
// context (cpu.go); takes mmlock.
//
// Address-space reservations (PROT_NONE) take no frames. Commits
// (PROT_READ/WRITE) are recorded in `committed`; small ones are mapped at
// once, large ones on first touch, one 2 MiB block per page fault (2 MiB
// pages where the range allows: one page-table write instead of 512), so a
// sparse structure such as the runtime's 32 MiB arena index costs only the
// blocks it uses. Kernel code touching program memory maps it first
// (userRange), since a fault inside the kernel is fatal. MADV_DONTNEED and munmap zero the
// range in place: the Go 1.26 heap relies on scavenged memory reading as
// zero, and keeping the frames mapped needs no TLB flush. Returning frames
// and demand paging come with the memory-subsystem issue.

import (
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/mm"
	"github.com/cumulusdb/cumulus/kernel/mm/vrange"
)

const (
	mapFixed          = 0x10
	mapAnonymous      = 0x20
	mapFixedNoReplace = 0x100000

	kernelImageBase = 0x4000000000
	kernelImageEnd  = kernelImageBase + 1<<30
	mmapTop         = 0x7fff_0000_0000
)

// mmlock guards the memory state: frames, pt, vmas, committed, mmapLo.
// Lock order: klock before mmlock (program memory is touched under klock,
// e.g. a futex word, and touching may map it).
var mmlock spinlock

var (
	mmapLo    uintptr
	committed mm.VMAs // program memory with PROT_READ/WRITE
	ranges    vrange.Allocator
)

// The window where mmap places ranges that come without a usable hint:
// each vCPU carves them from its own 1 GiB superblocks (kernel/mm/vrange),
// so placement never contends across vCPUs. (The VMA set and the page
// table still take mmlock.) The Go heap's hinted arenas start far below.
const (
	rangeLo = 0x7e00_0000_0000
	rangeHi = 0x7fff_0000_0000
)

// eagerBelow: commits smaller than this are mapped at mmap time, since a
// page fault costs more (~15-20 µs delivery, plus a ~46 µs exit where
// its address cannot be decoded, see faultaddr.go) than mapping a few
// pages.
const eagerBelow = mm.HugeSize

// demandPage maps the block around a faulting address if the program
// committed it. mmlock is taken here.
func demandPage(addr uintptr) bool {
	mmlock.lock()
	defer mmlock.unlock()
	if populateAround(addr) {
		return true
	}
	if committed.Find(addr) >= 0 {
		kprint("cumulus kernel: out of memory: no free frame for a page fault in committed memory (guest RAM exhausted; run with a larger -mem)\n")
	}
	return false
}

// populateAround maps [2 MiB block of addr] ∩ [committed area of addr].
// mmlock held.
func populateAround(addr uintptr) bool {
	i := committed.Find(addr)
	if i < 0 {
		return false
	}
	a := committed.At(i)
	lo := max(addr&^(mm.HugeSize-1), a.Start)
	hi := min((addr|(mm.HugeSize-1))+1, a.End)
	if err := pt.Populate(lo, hi-lo); err != nil {
		return false
	}
	stats.FramesUsed = frames.Used()
	stats.PTWrites = pt.Writes
	return true
}

// userRange makes sure [a, a+n) is mapped before kernel code touches it,
// mapping committed memory that was not touched yet. It reports false for
// memory the program does not own.
func userRange(a, n uintptr) bool {
	if a < boot.NullGuardEnd || a+n < a {
		return false
	}
	for p := a &^ (mm.PageSize - 1); p < a+n; p += mm.PageSize {
		if _, size := pt.Lookup(p); size != 0 {
			continue
		}
		mmlock.lock()
		ok := populateAround(p)
		mmlock.unlock()
		if !ok {
			return false
		}
	}
	// Snapshots: the caller may write here; make shared pages private.
	return cowUsed.Load() == 0 || cowUserRange(a, n)
}

func initMmap() {
	// The identity-mapped RAM (and the image in it) and the kernel's own
	// image are never handed out.
	mmapLo = (uintptr(bi.RAMSize) + 1<<30 - 1) &^ (1<<30 - 1)
	if mmapLo < 4<<30 {
		mmapLo = 4 << 30
	}
	vmas.Insert(0, mmapLo)
	vmas.Insert(kernelImageBase, kernelImageEnd)
	vmas.Insert(boot.MMIOBase, boot.MMIOBase+1<<30)     // device register windows
	vmas.Insert(boot.NetsvcBase, boot.NetsvcBase+1<<30) // the network service's image
	if err := ranges.Init(rangeLo, rangeHi, ncpu, 0); err != nil {
		kprint("cumulus kernel: range allocator: bad window\n")
	}
}

func sysMmapImpl(addr, length, prot, flags uintptr, fd int32, off uintptr) int64 {
	if length == 0 {
		return -_EINVAL
	}
	if flags&mapAnonymous == 0 {
		return -_ENODEV // no files to map yet
	}
	n := (length + mm.PageSize - 1) &^ (mm.PageSize - 1)
	mmlock.lock()
	defer mmlock.unlock()
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
		if a, err := ranges.Alloc(currentCPU(), n, align); err == nil && vmas.Free(a, a+n) {
			va = a
		} else if va = vmas.FindGap(n, align, mmapLo, rangeLo); va == 0 {
			return -_ENOMEM
		}
	}
	if !snapGuard(va, n) { // snapshot.go: a live view, or a source made private first
		return -_EBUSY
	}
	if !vmas.Insert(va, va+n) {
		return -_ENOMEM
	}
	// Whatever was mapped here before now reads as zero.
	pt.Zero(va, n)
	if prot != 0 {
		if !committed.Insert(va, va+n) {
			return -_ENOMEM
		}
		if n < eagerBelow {
			if err := pt.Populate(va, n); err != nil {
				stats.FramesUsed = frames.Used()
				return -_ENOMEM
			}
		}
	} else {
		committed.Remove(va, va+n)
	}
	stats.FramesUsed = frames.Used()
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
	mmlock.lock()
	defer mmlock.unlock()
	if !snapGuard(addr, n) { // snapshot.go: release a view through kapi, not munmap
		return -_EINVAL
	}
	discard(addr, n)
	vmas.Remove(addr, addr+n)
	committed.Remove(addr, addr+n)
	if addr >= rangeLo && addr+n <= rangeHi {
		ranges.Free(currentCPU(), addr, n) // back to this vCPU's free list
	}
	return 0
}

func sysMadviseImpl(addr, length uintptr, advice int) int64 {
	switch advice {
	case 4, 8: // MADV_DONTNEED, MADV_FREE
		if addr < boot.NullGuardEnd {
			return -_EINVAL
		}
		n := (length + mm.PageSize - 1) &^ (mm.PageSize - 1)
		mmlock.lock()
		ok := snapGuard(addr, n) // snapshot.go
		if ok {
			discard(addr, n)
		}
		mmlock.unlock()
		if !ok {
			return -_EINVAL
		}
	}
	return 0
}

// sysMprotectImpl: PROT_NONE takes the range out of the committed set
// (its contents are dropped: they read as zero if committed again); any
// other protection commits it, mapped on first touch. Read-only and
// no-exec protections are not enforced yet: committed memory is writable.
func sysMprotectImpl(addr, length, prot uintptr) int64 {
	if addr&(mm.PageSize-1) != 0 {
		return -_EINVAL
	}
	n := (length + mm.PageSize - 1) &^ (mm.PageSize - 1)
	if n == 0 {
		return 0
	}
	if addr < mmapLo || addr+n > mmapTop || addr+n < addr {
		return -_ENOMEM
	}
	mmlock.lock()
	defer mmlock.unlock()
	if prot == 0 {
		if !snapGuard(addr, n) { // snapshot.go
			return -_EINVAL
		}
		pt.Zero(addr, n)
		committed.Remove(addr, addr+n)
		return 0
	}
	if !committed.Insert(addr, addr+n) {
		return -_ENOMEM
	}
	return 0
}

// sysMincoreImpl reports, per page, whether a frame backs it: a walk of
// the page table by plain loads.
func sysMincoreImpl(addr, length, vec uintptr) int64 {
	if addr&(mm.PageSize-1) != 0 {
		return -_EINVAL
	}
	n := (length + mm.PageSize - 1) / mm.PageSize
	if !userRange(vec, n) {
		return -_EFAULT
	}
	out := ubytes(vec, n)
	for i := range out {
		_, size := pt.Lookup(addr + uintptr(i)*mm.PageSize)
		out[i] = 0
		if size != 0 {
			out[i] = 1
		}
	}
	return 0
}

// sysSysinfoImpl fills struct sysinfo (uptime, RAM, procs).
func sysSysinfoImpl(a uintptr) int64 {
	if !userRange(a, 112) {
		return -_EFAULT
	}
	b := ubytes(a, 112)
	clear(b)
	*u64(a) = uint64(nanotime() / 1e9)
	*u64(a + 32) = uint64(frames.Total)      // totalram
	*u64(a + 40) = uint64(frames.Free())     // freeram
	*(*uint16)(ptrOf(a + 80)) = uint16(live) // procs
	*u32(a + 104) = 1                        // mem_unit
	return 0
}

// reclaimMin: discards smaller than this zero in place instead of
// returning frames, because returning frames needs a TLB shootdown on
// every vCPU (a monitor-run CPL 0 stub, a few hundred µs in all).
//
// Reclaim is on by default (the monitor sets boot.FlagReclaim; `cumulus
// run -reclaim=false` turns it off, and discarded memory is then zeroed in
// place and keeps its frames). TestShootdown shows no vCPU reaching a
// reused frame through a stale translation; the GC-churn test (3 GiB
// through 512 MiB) ran 40 times in a row with it, returning ~29,000
// frames in 29 shootdowns per run. (A corrupted goroutine stack seen once
// before the exit path's SYSCALL was excluded from rewriting has not
// recurred.)
const reclaimMin = 256 << 10

var reclaimBuf [512]mm.Reclaimed

// discard makes [va, va+n) read as zero and, for large ranges, gives the
// frames of whole pages back to the allocator: unmap, one shootdown per
// batch, then free (they are zeroed when reused). mmlock held.
func discard(va, n uintptr) {
	if bi.Flags&boot.FlagReclaim == 0 || n < reclaimMin {
		pt.Zero(va, n)
		return
	}
	end := va + n
	for va < end {
		k, next := pt.Unmap(va, end-va, reclaimBuf[:])
		if k > 0 {
			outl(boot.HCFlush, 0)
			stats.Shootdowns++
			for _, r := range reclaimBuf[:k] {
				order := 0
				if r.Size == mm.HugeSize {
					order = 9
				}
				if frames.Put(r.PA, order) == nil {
					stats.FramesReclaimed += uint64(r.Size / mm.PageSize)
				}
			}
		}
		va = next
	}
	stats.FramesUsed = frames.Used()
	stats.PTWrites = pt.Writes
}
