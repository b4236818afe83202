package kernel

// Copy-on-write snapshots of program memory (kapi.Snapshot, DESIGN §3
// "snapshots", issue 8). The page-table work is kernel/mm/cow.go; this
// file is the kernel's side: bookkeeping of live snapshots, the kernel
// calls (kcall.go), the write-fault hook (trap.go) and the guards that
// keep munmap/madvise/mprotect/mmap and the kernel's own writes to program
// memory (userRange) from writing through a write-protected entry.
//
// Constraints: trap context (cpu.go): no allocation, maps, goroutines or
// blocking; all state is in fixed package arrays. Everything that edits
// page tables or the snapshot table runs under mmlock.
//
// What a snapshot is. Snapshot(src, n) (2 MiB aligned, wholly committed
// memory; untouched parts are populated first) returns a view at a new
// address from the range allocator (kernel/mm/vrange), placed at the same
// offset modulo 1 GiB as src, so whole GiBs are shared by one page-table
// entry per side: a 4 GiB area costs 8 entries written, whatever its size
// in pages. No data is copied at creation. Both sides are then
// copy-on-write: the first write on either side to a page still shared
// copies it (2 MiB pages whole, see cow.go for why not split), and the
// page tables on the way are copied by the writing thread itself.
//
// TLBs. Creation write-protects the source, and no vCPU may still write
// through a translation cached before. Every entry that creation, release
// and copy-on-write breaks write is a page-directory entry or higher (2 MiB
// or 1 GiB pieces, or the entry above a replaced table; a break that
// copies a 4 KiB page flushes, see cow.go's copyPage), and under PVM
// (boot.FlagShadowPT) those writes are trapped by the shadow MMU, which
// zaps the shadow entries and flushes every vCPU's TLB before the writing
// instruction completes: no shootdown is needed, at creation (it cost
// 2-6 ms of a 4 GiB snapshot's creation) or before freeing what a release
// unlinked (cow.Coherent). Without that flag, creation ends with one
// HCFlush (the monitor runs the CR3 reload on each vCPU), which stands in
// for the talk's reader-side invlpg (CPL 3 has none), and release flushes
// before frames that lost their last reference are reused. A writer
// blocked in a copy-on-write fault while creation runs waits for mmlock,
// so the cut is one instant even though the entries are write-protected
// one after the other. A stale read-only translation on another vCPU
// faults on its next write and finds the entry already writable.
//
// Overlaps: a snapshot of a range overlapping a live view is refused
// (EBUSY); several snapshots of the same or overlapping source ranges are
// fine (reference counts). munmap/MADV_DONTNEED/mprotect(PROT_NONE)/
// MAP_FIXED on a live view are refused (release it instead); on a source
// they first make the range private (copying what is still shared), so
// the snapshots keep their contents.

import (
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/mm"
)

const (
	_EBUSY    = 16
	maxSnaps  = 64
	snapAlign = 1 << 30
)

type snapRec struct {
	live         bool
	src, view, n uintptr
	vbase, vlen  uintptr // the range taken from the range allocator
}

var (
	cow     mm.CoW
	snaps   [maxSnaps]snapRec
	cowUsed atomic.Uint32 // set at the first snapshot: write-protected entries may exist from then on
	snapCnt mm.SnapCounters
)

func cowFlush() {
	outl(boot.HCFlush, 0)
	stats.Shootdowns++
}

// overlapsView reports whether [a, a+n) overlaps a live view. mmlock held.
func overlapsView(a, n uintptr) bool {
	for i := range snaps {
		s := &snaps[i]
		if s.live && a < s.view+s.n && s.view < a+n {
			return true
		}
	}
	return false
}

// snapCreate takes a snapshot of [src, src+n) and returns the view's
// address or a negative errno.
func snapCreate(src, n uintptr) (uintptr, int64) {
	if n == 0 || (src|n)&(mm.HugeSize-1) != 0 || src+n < src || src < mmapLo || src+n > mmapTop {
		return 0, -_EINVAL
	}
	t0 := nanotime()
	mmlock.lock()
	defer mmlock.unlock()
	if cow.PT == nil {
		cow.Init(&pt, cowFlush)
		cow.Coherent = bi.Flags&boot.FlagShadowPT != 0
	}
	if overlapsView(src, n) {
		return 0, -_EBUSY
	}
	i := committed.Find(src)
	if i < 0 || committed.At(i).End < src+n {
		return 0, -_EFAULT // not (wholly) memory the program owns
	}
	slot := -1
	for k := range snaps {
		if !snaps[k].live {
			slot = k
			break
		}
	}
	if slot < 0 {
		return 0, -_ENOMEM
	}
	// Untouched parts of the source read as zero: give them frames now,
	// so both sides share them.
	if err := pt.Populate(src, n); err != nil {
		return 0, -_ENOMEM
	}
	off := src & (snapAlign - 1)
	vlen := (off + n + snapAlign - 1) &^ (snapAlign - 1)
	cpu := currentCPU()
	vbase, err := ranges.Alloc(cpu, vlen, snapAlign)
	if err != nil || !vmas.Free(vbase, vbase+vlen) {
		if err == nil {
			ranges.Free(cpu, vbase, vlen)
		}
		return 0, -_ENOMEM
	}
	vmas.Insert(vbase, vbase+vlen)
	view := vbase + off
	cowUsed.Store(1)
	if err := cow.Share(src, view, n); err != nil {
		cow.Drop(view, n)
		cow.FlushAndFree()
		vmas.Remove(vbase, vbase+vlen)
		ranges.Free(cpu, vbase, vlen)
		snapCounters()
		if err == mm.ErrNoMemory {
			return 0, -_ENOMEM
		}
		return 0, -_EFAULT
	}
	// Every vCPU drops translations cached before the source became
	// read-only: from here on the view holds the state of this instant.
	tf := nanotime()
	cow.FlushAndFree()
	t1 := nanotime()
	snapCnt.CreateFlushNs += uint64(t1 - tf)
	snapCnt.CreateNs += uint64(t1 - t0)
	snaps[slot] = snapRec{live: true, src: src, view: view, n: n, vbase: vbase, vlen: vlen}
	snapCnt.Created++
	snapCounters()
	return view, 0
}

// snapRelease drops the view at view. Frames and tables only it still
// referenced are freed after a TLB flush; source pages nothing shares any
// more become writable again (no faults after the last snapshot is gone).
func snapRelease(view uintptr) int64 {
	t0 := nanotime()
	mmlock.lock()
	defer mmlock.unlock()
	for k := range snaps {
		s := &snaps[k]
		if !s.live || s.view != view {
			continue
		}
		if err := cow.Drop(s.view, s.n); err != nil {
			return -_ENOMEM
		}
		// Restore may replace tables: one flush, after both, frees
		// what they unlinked.
		cow.Restore(s.src, s.n)
		tf := nanotime()
		cow.FlushAndFree()
		snapCnt.ReleaseFlushNs += uint64(nanotime() - tf)
		vmas.Remove(s.vbase, s.vbase+s.vlen)
		ranges.Free(currentCPU(), s.vbase, s.vlen)
		s.live = false
		snapCnt.Released++
		snapCnt.ReleaseNs += uint64(nanotime() - t0)
		snapCounters()
		return 0
	}
	return -_EINVAL // not a live snapshot (released twice?)
}

// snapBreak makes [a, a+n) privately writable now, as a write fault on
// each page would, but without the faults (~20 µs each under PVM): a
// writer that knows where it is about to write can call it first, and
// another thread can take copies off the writers' path (an analytical
// thread privatising the source before it scans: the writers then find
// their pages copied). Each copy runs without mmlock, so this and the
// writers' faults copy in parallel.
func snapBreak(a, n uintptr) int64 {
	if a+n < a {
		return -_EINVAL
	}
	if cowUsed.Load() == 0 {
		return 0
	}
	for p := a &^ (mm.PageSize - 1); p < a+n; {
		mmlock.lock()
		_, size := pt.Lookup(p)
		writable := size != 0 && cow.Writable(p)
		mmlock.unlock()
		if size == 0 {
			return -_EFAULT
		}
		if !writable {
			ok, err := breakShared(p, &snapCnt.Breaks, nil, 0)
			if err != nil {
				return -_ENOMEM
			}
			if !ok {
				return -_EFAULT // unmapped meanwhile
			}
		}
		p = (p | (size - 1)) + 1
	}
	return 0
}

// breakShared makes the page at va privately writable (mm.Break: the
// page copy runs without mmlock, which is not held on entry) and counts
// it in *count (with the time since t0 in *ns, if ns is not nil). It
// reports false when va is not mapped.
func breakShared(va uintptr, count, ns *uint64, t0 int64) (bool, error) {
	var b mm.Break
	mmlock.lock()
	defer mmlock.unlock()
	ok, cp, err := cow.BeginBreak(va, &b)
	if err == nil && cp {
		mmlock.unlock()
		tc := nanotime()
		err = cow.CopyBreak(&b)
		atomic.AddUint64(&snapCnt.CopyNs, uint64(nanotime()-tc))
		mmlock.lock()
		if err == nil {
			ok, err = cow.FinishBreak(&b)
		}
	}
	if ok && err == nil {
		*count++
		if ns != nil {
			*ns += uint64(nanotime() - t0)
		}
		snapCounters()
	}
	return ok, err
}

// cowFault resolves a write fault on a write-protected page (trap.go).
// The page copy runs without mmlock (mm.Break): a 2 MiB copy takes
// 0.15-0.3 ms (~8 ms into frames the host has not backed yet, see
// vmm.Config.Prealloc), and other vCPUs' faults, snapshot creation and
// the memory system calls need not wait for it.
func cowFault(addr uintptr) bool {
	if cowUsed.Load() == 0 || addr < boot.NullGuardEnd {
		return false
	}
	ok, err := breakShared(addr, &snapCnt.Faults, &snapCnt.FaultNs, nanotime())
	if err != nil {
		kprint("cumulus kernel: out of memory: no free frame for a copy-on-write page (run with a larger -mem)\n")
		return false
	}
	return ok
}

// cowUserRange is userRange's part: kernel code (and the monitor, for
// host-share reads) is about to write into [a, a+n), so shared pages in it
// are made private first, as a write fault would. Reads are treated alike.
func cowUserRange(a, n uintptr) bool {
	for p := a &^ (mm.PageSize - 1); p < a+n; p += mm.PageSize {
		if cow.Writable(p) {
			continue
		}
		mmlock.lock()
		ok, err := cow.BreakWrite(p)
		if ok && err == nil {
			snapCnt.Breaks++
		}
		mmlock.unlock()
		if !ok || err != nil {
			return false
		}
	}
	return true
}

// snapGuard runs before munmap, MADV_DONTNEED, mprotect(PROT_NONE) and
// mmap over [a, a+n) (mmlock held). It refuses ranges overlapping a live
// view and makes the parts of live sources in the range private, so the
// change cannot reach a snapshot.
func snapGuard(a, n uintptr) bool {
	if cowUsed.Load() == 0 {
		return true
	}
	if overlapsView(a, n) {
		return false
	}
	for k := range snaps {
		s := &snaps[k]
		if !s.live || a >= s.src+s.n || s.src >= a+n {
			continue
		}
		lo, hi := max(a, s.src), min(a+n, s.src+s.n)
		for p := lo &^ (mm.PageSize - 1); p < hi; {
			_, size := pt.Lookup(p)
			if size == 0 {
				p += mm.PageSize
				continue
			}
			if !cow.Writable(p) {
				if _, err := cow.BreakWrite(p); err != nil {
					return false
				}
				snapCnt.Breaks++
			}
			p = (p | (size - 1)) + 1
		}
	}
	snapCounters()
	return true
}

// snapCounters refreshes the counters kernel calls report. mmlock held.
func snapCounters() {
	snapCnt.CoWStats = cow.Stats
	live := uint64(0)
	for k := range snaps {
		if snaps[k].live {
			live++
		}
	}
	snapCnt.Live = live
	stats.PTWrites = pt.Writes
	stats.FramesUsed = frames.Used()
}

// snapStatsTo copies the counters into program memory at a.
func snapStatsTo(a uintptr) int64 {
	const size = unsafe.Sizeof(mm.SnapCounters{})
	if !userRange(a, size) {
		return -_EFAULT
	}
	mmlock.lock()
	*(*mm.SnapCounters)(ptrOf(a)) = snapCnt
	mmlock.unlock()
	return 0
}
