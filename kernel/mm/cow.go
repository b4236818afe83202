package mm

// Copy-on-write sharing of page-table subtrees: the machinery behind
// kernel snapshots (kernel/snapshot.go, DESIGN §3 "snapshots").
//
// Constraints (trap context, like the rest of this package): no
// allocation, maps, interfaces, goroutines or blocking; recursion is at
// most four levels deep. The caller holds the memory lock (the kernel's
// mmlock) for every call: entries are edited by one CPU at a time, while
// the MMU of every CPU reads them concurrently. Reference counts are
// atomics all the same, so finer locking later stays correct.
//
// # Model
//
// x86 ANDs the write permission of every level of a walk. An entry with W
// clear therefore protects everything below it, and that is the only
// meaning W=0 has in this kernel (protections other than "present" are
// not enforced otherwise): "what this entry points at (a page table or a
// data frame) may be shared; never write through it".
//
//   - Share(src, dst, n) makes [dst, dst+n) a copy of [src, src+n) without
//     copying data: for every piece covering a whole entry (1 GiB or
//     2 MiB) both sides get an entry pointing at the same target with W
//     clear, and the target's reference count goes up. A 4 GiB area
//     aligned to 1 GiB costs four entries per side, however it is mapped
//     (the "upper-level write-protect trick": one entry covers 512).
//   - BreakWrite(va) runs on the first write after that (a protection
//     fault, or kernel code about to write). Walking down, every entry
//     with W clear that points at a table is resolved by copying that
//     table (512 entries, into a fresh frame that is not live yet, so the
//     copy costs no trapped page-table writes) with W clear in every copied
//     entry: the children are now shared by both tables. The copy replaces
//     the entry (one live write). At the leaf, a frame still shared is
//     copied, one that is no longer shared is made writable in place.
//     Tables are never edited in place once shared, and a table reached
//     through W=0 is always copied, even when its last sharer is gone: its
//     own entries may still have W set towards children it shares with a
//     copy made earlier. The faulting thread copies only the tables on its
//     own path: the page-table copy is done lazily, in parallel pieces, by
//     whoever needs them ("ad-hoc parallelization").
//   - Drop(va, n) removes the mappings of a range, dropping references;
//     frames and tables whose last reference goes are freed after the next
//     TLB flush (the caller's Flush), since stale translations may still
//     reach them until then (with Coherent, the entry writes themselves
//     removed those translations).
//
// Invariant: a target reachable from the root through entries that all
// have W set has no other reference (its extra count is 0).
//
// Granularity: data is copied at the granularity it is mapped with. A
// 2 MiB page is copied whole (one order-9 frame, one entry). Splitting it
// into 512 4 KiB entries would make the copy cheaper but turn every later
// write to another 4 KiB piece of it into a fault of its own (~20 µs
// under PVM even with the address decoded instead of read from CR2, plus
// a trapped 4 KiB entry write): a random-write OLTP load over 4 GiB takes
// 2,048 faults with whole copies, up to a million with splitting.

import (
	"errors"
	"sync/atomic"
)

// Errors of the copy-on-write operations.
var (
	ErrCoWAlign     = errors.New("mm: snapshot range not 2 MiB aligned")
	ErrCoWNotMapped = errors.New("mm: snapshot range not wholly mapped")
	ErrCoWFrame     = errors.New("mm: page-table target outside the frame allocator")
)

const (
	// One 4 KiB page of uint32 counts covers 4 MiB of frames: the first
	// snapshot touching a part of RAM pays one page (~10 µs), not a 1 MiB
	// block (0.3-9 ms under PVM, most of a 4 GiB snapshot's creation).
	refsPerBlock = PageSize / 4
	refBlockOrd  = 0
	maxRefBlocks = 256 << 30 / (refsPerBlock * PageSize) // 256 GiB of frames: a 512 KiB table
)

// Refs counts the extra references to frames, one uint32 per 4 KiB frame
// number of Frames (a 2 MiB frame is counted at its first 4 KiB frame).
// The stored value is the number of references beyond the first: a frame
// never shared needs no entry, and 0 means "sole owner". Blocks of counts
// (a 4 KiB frame per 4 MiB of frames) are taken from Frames on first use.
type Refs struct {
	F      *Frames
	blocks [maxRefBlocks]uintptr // physical address of each block; 0: all counts 0
}

func (r *Refs) slot(pa uintptr, create bool) (*uint32, error) {
	if pa < r.F.base || pa >= r.F.hi {
		return nil, ErrCoWFrame
	}
	fr := (pa - r.F.base) / PageSize
	b := fr / refsPerBlock
	if b >= maxRefBlocks {
		return nil, ErrCoWFrame
	}
	if r.blocks[b] == 0 {
		if !create {
			return nil, nil
		}
		bp, err := r.F.Get(refBlockOrd, true)
		if err != nil {
			return nil, err
		}
		r.blocks[b] = bp
	}
	return (*uint32)(r.F.ptr(r.blocks[b] + (fr%refsPerBlock)*4)), nil
}

// Extra reports the references to pa beyond the first.
func (r *Refs) Extra(pa uintptr) uint32 {
	p, _ := r.slot(pa, false)
	if p == nil {
		return 0
	}
	return atomic.LoadUint32(p)
}

// Inc adds a reference to pa.
func (r *Refs) Inc(pa uintptr) error {
	p, err := r.slot(pa, true)
	if err != nil {
		return err
	}
	atomic.AddUint32(p, 1)
	return nil
}

// Dec drops a reference to pa and reports whether it was the last one.
func (r *Refs) Dec(pa uintptr) (last bool) {
	p, _ := r.slot(pa, false)
	if p == nil {
		return true
	}
	for {
		v := atomic.LoadUint32(p)
		if v == 0 {
			return true
		}
		if atomic.CompareAndSwapUint32(p, v, v-1) {
			return false
		}
	}
}

// CoWStats counts what the copy-on-write code did.
type CoWStats struct {
	Shares        uint64 // entries shared (each covering 2 MiB or 1 GiB on each side)
	LiveWrites    uint64 // entries written in live tables (each traps into a shadow MMU)
	TableCopies   uint64 // page tables copied on a write (each 512 entries into a fresh frame)
	TableRebuilds uint64 // page tables rebuilt in a fresh frame instead of many entries written in place (Restore)
	PageCopies    uint64 // data pages copied on a write
	CopyBytes     uint64 // bytes of data copied
	PageReuses    uint64 // write-protected pages made writable in place (no sharer left)
	Flushes       uint64 // TLB flushes requested
	FramesFreed   uint64 // frames (tables and data, 4 KiB units) freed after a flush
}

// SnapCounters is what the kernel reports about snapshots (kernel call
// KCSnapStats; kapi/unikernel reads the same struct).
type SnapCounters struct {
	CoWStats
	Faults   uint64 // write faults resolved by copy-on-write
	Breaks   uint64 // pages made private without a fault (kernel writes, KCSnapBreak, guards)
	Created  uint64 // snapshots taken
	Released uint64 // snapshots released
	Live     uint64 // snapshots alive now

	CreateNs       uint64 // time in snapshot creation, in the kernel (sum)
	CreateFlushNs  uint64 // of which TLB flushes (the monitor's CR3 reload on every vCPU)
	ReleaseNs      uint64 // time in release (sum)
	ReleaseFlushNs uint64 // of which TLB flushes
	FaultNs        uint64 // time resolving copy-on-write faults, in the kernel (sum; delivery and return not included)
	CopyNs         uint64 // of which copying data pages
}

const pendingMax = 512

type pendingFree struct {
	pa    uintptr
	order int
}

// CoW shares and un-shares page-table subtrees of PT.
type CoW struct {
	PT    *PageTable
	Refs  Refs
	Flush func() // flushes every CPU's TLB (kernel: the HCFlush privop)
	// Coherent: every write this code makes to a live table above the
	// 4 KiB level reaches every CPU's TLB by itself (a shadow-paging
	// hypervisor traps it: boot.FlagShadowPT), so FlushAndFree frees
	// without flushing. The writes whose translations must go before a
	// free are at that level: Share and Drop write 2 MiB or 1 GiB
	// entries, and a table is replaced through its parent entry.
	Coherent bool
	Stats    CoWStats

	pending  [pendingMax]pendingFree
	npending int
	retired  [retiredMax]uintptr // tables Restore replaced, freed when it ends
	nretired int
	freeGen  uint64 // counts FlushAndFree calls that freed frames (Break)
}

// Init binds c to pt.
func (c *CoW) Init(pt *PageTable, flush func()) {
	c.PT = pt
	c.Refs.F = pt.Frames
	c.Flush = flush
}

func (c *CoW) set(t *[512]uint64, i uintptr, v uint64) {
	t[i] = v
	c.PT.Writes++
	c.Stats.LiveWrites++
}

func span(level uint) uintptr { return 1 << (12 + 9*level) }

// Mapped reports whether every page of [va, va+n) is mapped.
func (c *CoW) Mapped(va, n uintptr) bool {
	end := va + n
	for va < end {
		_, size := c.PT.Lookup(va)
		if size == 0 {
			return false
		}
		va = (va | (size - 1)) + 1
	}
	return true
}

// Share makes [dst, dst+n) map the same frames as [src, src+n), both
// write-protected, without copying data. src, dst and n are 2 MiB
// aligned; [src, src+n) must be wholly mapped. With dst ≡ src modulo
// 1 GiB, whole GiBs are shared by one upper-level entry per side. Entries
// of [dst, dst+n) that are present already are replaced only below the
// level where they differ; the caller passes a range with no mappings.
// The caller flushes TLBs afterwards (FlushAndFree): until then another
// CPU may still write through a translation cached before.
func (c *CoW) Share(src, dst, n uintptr) error {
	if (src|dst|n)&(HugeSize-1) != 0 || n == 0 || src+n < src || dst+n < dst {
		return ErrCoWAlign
	}
	if !c.Mapped(src, n) {
		return ErrCoWNotMapped
	}
	root := c.PT.table(c.PT.Root)
	return c.share(root, root, 3, src, dst, src+n)
}

func (c *CoW) share(st, dt *[512]uint64, level uint, s, d, end uintptr) error {
	sz := span(level)
	for s < end {
		step := min(sz-s&(sz-1), sz-d&(sz-1), end-s)
		si, di := idx(s, level), idx(d, level)
		se := st[si]
		if se&PTEPresent == 0 {
			return ErrCoWNotMapped
		}
		whole := step == sz
		switch {
		case whole && level <= 2 && dt[di]&PTEPresent == 0:
			if err := c.Refs.Inc(uintptr(se & PTEAddr)); err != nil {
				return err
			}
			if se&PTEWrite != 0 {
				c.set(st, si, se&^PTEWrite)
			}
			c.set(dt, di, se&^PTEWrite)
			c.Stats.Shares++
		case level == 0 || se&PTEHuge != 0:
			// Only a partial 2 MiB page or a present destination page can
			// get here; Share's alignment rules out the first.
			return ErrCoWAlign
		default:
			sc, err := c.private(st, si)
			if err != nil {
				return err
			}
			dc, err := c.destTable(dt, di)
			if err != nil {
				return err
			}
			if err := c.share(sc, dc, level-1, s, d, s+step); err != nil {
				return err
			}
		}
		s += step
		d += step
	}
	return nil
}

// destTable returns the private table under dt[i], creating it.
func (c *CoW) destTable(dt *[512]uint64, i uintptr) (*[512]uint64, error) {
	e := dt[i]
	if e&PTEPresent == 0 {
		return c.PT.next(dt, i, true)
	}
	if e&PTEHuge != 0 {
		return nil, ErrCoWAlign
	}
	return c.private(dt, i)
}

// private makes the table under t[i] private to this path (copying it if
// t[i] has W clear) and returns it. t itself must be private.
func (c *CoW) private(t *[512]uint64, i uintptr) (*[512]uint64, error) {
	if t[i]&PTEWrite == 0 {
		if err := c.copyTable(t, i); err != nil {
			return nil, err
		}
	}
	return c.PT.table(uintptr(t[i] & PTEAddr)), nil
}

// copyTable replaces the shared table under t[i] by a private copy whose
// entries all have W clear.
func (c *CoW) copyTable(t *[512]uint64, i uintptr) error {
	e := t[i]
	old := uintptr(e & PTEAddr)
	sole := c.Refs.Extra(old) == 0
	pa, err := c.PT.Frames.Get(0, false)
	if err != nil {
		return err
	}
	ot, nt := c.PT.table(old), c.PT.table(pa)
	for j := range ot {
		x := ot[j]
		if x&PTEPresent != 0 {
			if !sole {
				if err := c.Refs.Inc(uintptr(x & PTEAddr)); err != nil {
					for k := 0; k < j; k++ {
						if ot[k]&PTEPresent != 0 {
							c.Refs.Dec(uintptr(ot[k] & PTEAddr))
						}
					}
					c.PT.Frames.Put(pa, 0)
					return err
				}
			}
			x &^= PTEWrite
		}
		nt[j] = x
	}
	c.set(t, i, uint64(pa)|e&^PTEAddr|PTEWrite)
	if sole {
		// The old table's references now belong to the copy; the table
		// itself goes once no TLB can reach it.
		c.deferFree(old, 0)
	} else {
		c.Refs.Dec(old)
	}
	c.Stats.TableCopies++
	return nil
}

// BreakWrite makes va writable for this path: shared tables above it are
// copied, and the data page is copied (or, with no sharer left, made
// writable in place). It reports false when va is not mapped.
func (c *CoW) BreakWrite(va uintptr) (bool, error) {
	t := c.PT.table(c.PT.Root)
	for level := uint(3); ; level-- {
		i := idx(va, level)
		e := t[i]
		if e&PTEPresent == 0 {
			return false, nil
		}
		if level == 0 || (level == 1 && e&PTEHuge != 0) {
			if e&PTEWrite != 0 {
				return true, nil // another CPU broke it first; our TLB was stale
			}
			return true, c.copyPage(t, i, level)
		}
		if e&PTEWrite == 0 {
			if err := c.copyTable(t, i); err != nil {
				return false, err
			}
		}
		t = c.PT.table(uintptr(t[i] & PTEAddr))
	}
}

func (c *CoW) copyPage(t *[512]uint64, i uintptr, level uint) error {
	e := t[i]
	old := uintptr(e & PTEAddr)
	if c.Refs.Extra(old) == 0 {
		c.set(t, i, e|PTEWrite)
		c.Stats.PageReuses++
		return nil
	}
	order := pageOrder(level)
	pa, err := c.PT.Frames.Get(order, false)
	if err != nil {
		return err
	}
	c.copyFrame(pa, old, order)
	c.install(t, i, level, pa)
	return nil
}

func pageOrder(level uint) int {
	if level == 1 {
		return 9
	}
	return 0
}

func (c *CoW) copyFrame(dst, src uintptr, order int) {
	size := uintptr(PageSize) << order
	copyData(c.PT.ptr(dst), c.PT.ptr(src), size)
}

// install points the write-protected leaf t[i] (at level), whose frame is
// still shared, at pa, a copy of it, writable.
func (c *CoW) install(t *[512]uint64, i uintptr, level uint, pa uintptr) {
	e := t[i]
	old := uintptr(e & PTEAddr)
	c.set(t, i, uint64(pa)|e&^PTEAddr|PTEWrite)
	c.Refs.Dec(old) // not the last: Extra was > 0
	c.Stats.PageCopies++
	c.Stats.CopyBytes += uint64(PageSize) << pageOrder(level)
	if level == 0 && c.Flush != nil {
		// A 4 KiB entry now points elsewhere, and a shadow MMU may let
		// the kernel write a 4 KiB table without trapping (KVM leaves
		// last-level tables "unsync" until the guest flushes): another
		// CPU could keep reading the old frame through a stale
		// translation. Entries above that level are always trapped.
		c.Flush()
		c.Stats.Flushes++
	}
}

// Break is a copy-on-write break in three steps, so that the slow part,
// the page copy, runs without the caller's memory lock (a 2 MiB copy into
// frames the hypervisor has not backed yet costs ~10 ms under PVM, almost
// all of it first touches): BeginBreak (lock held) copies the tables on
// the path and says whether the page needs a copy; CopyBreak (no lock)
// makes it; FinishBreak (lock held) installs it if va still maps the
// frame it was copied from, write-protected and shared, and gives it back
// otherwise. The frame copied from cannot change meanwhile: it is shared,
// so every mapping of it is write-protected, and it stays shared (and
// mapped here) unless va's entry changes, which FinishBreak sees. It can
// only be freed after va stops mapping it; freeGen catches a free and a
// reuse of the same frame at va in between.
type Break struct {
	VA      uintptr
	Old     uintptr // frame to copy from
	New     uintptr // the copy (CopyBreak)
	Order   int
	freeGen uint64
}

// BeginBreak does BreakWrite's work up to the page copy. It reports
// mapped=false when va is not mapped, and copy=true when the page must be
// copied: b then says from where.
func (c *CoW) BeginBreak(va uintptr, b *Break) (mapped, copy bool, err error) {
	t := c.PT.table(c.PT.Root)
	for level := uint(3); ; level-- {
		i := idx(va, level)
		e := t[i]
		if e&PTEPresent == 0 {
			return false, false, nil
		}
		if level == 0 || (level == 1 && e&PTEHuge != 0) {
			old := uintptr(e & PTEAddr)
			if e&PTEWrite != 0 {
				return true, false, nil
			}
			if c.Refs.Extra(old) == 0 {
				return true, false, c.copyPage(t, i, level) // writable in place
			}
			*b = Break{VA: va, Old: old, Order: pageOrder(level), freeGen: c.freeGen}
			return true, true, nil
		}
		if e&PTEWrite == 0 {
			if err := c.copyTable(t, i); err != nil {
				return false, false, err
			}
		}
		t = c.PT.table(uintptr(t[i] & PTEAddr))
	}
}

// CopyBreak takes a frame and copies b.Old into it. The caller's lock is
// not needed (the frame allocator is lock-free).
func (c *CoW) CopyBreak(b *Break) error {
	pa, err := c.PT.Frames.Get(b.Order, false)
	if err != nil {
		return err
	}
	c.copyFrame(pa, b.Old, b.Order)
	b.New = pa
	return nil
}

// FinishBreak installs b's copy at b.VA, or gives it back where another
// CPU broke the page meanwhile, the page is no longer shared (it becomes
// writable in place), or the mapping changed (then the page is broken
// again here, under the lock). It reports false when b.VA is no longer
// mapped.
func (c *CoW) FinishBreak(b *Break) (bool, error) {
	t := c.PT.table(c.PT.Root)
	for level := uint(3); ; level-- {
		i := idx(b.VA, level)
		e := t[i]
		if e&PTEPresent == 0 {
			c.PT.Frames.Put(b.New, b.Order)
			return false, nil
		}
		if level == 0 || (level == 1 && e&PTEHuge != 0) {
			switch {
			case e&PTEWrite != 0:
				c.PT.Frames.Put(b.New, b.Order)
			case uintptr(e&PTEAddr) != b.Old || pageOrder(level) != b.Order || c.freeGen != b.freeGen ||
				c.Refs.Extra(b.Old) == 0:
				c.PT.Frames.Put(b.New, b.Order)
				return true, c.copyPage(t, i, level)
			default:
				c.install(t, i, level, b.New)
			}
			return true, nil
		}
		if e&PTEWrite == 0 {
			// Shared again meanwhile (a new snapshot): the copy is still
			// of the right contents, the tables are copied as usual.
			if err := c.copyTable(t, i); err != nil {
				c.PT.Frames.Put(b.New, b.Order)
				return false, err
			}
		}
		t = c.PT.table(uintptr(t[i] & PTEAddr))
	}
}

// Writable reports whether a write to va would succeed: present, W set on
// every level.
//
//go:nosplit
func (c *CoW) Writable(va uintptr) bool {
	t := c.PT.table(c.PT.Root)
	for level := uint(3); ; level-- {
		e := t[idx(va, level)]
		if e&(PTEPresent|PTEWrite) != PTEPresent|PTEWrite {
			return false
		}
		if level == 0 || (level == 1 && e&PTEHuge != 0) {
			return true
		}
		t = c.PT.table(uintptr(e & PTEAddr))
	}
}

// Drop removes the mappings of [va, va+n) (2 MiB aligned), dropping one
// reference per entry removed. What loses its last reference is freed by
// FlushAndFree. Unmapped parts are skipped.
func (c *CoW) Drop(va, n uintptr) error {
	if (va|n)&(HugeSize-1) != 0 || va+n < va {
		return ErrCoWAlign
	}
	return c.drop(c.PT.table(c.PT.Root), 3, va, va+n)
}

func (c *CoW) drop(t *[512]uint64, level uint, s, end uintptr) error {
	sz := span(level)
	for s < end {
		step := min(sz-s&(sz-1), end-s)
		i := idx(s, level)
		e := t[i]
		switch {
		case e&PTEPresent == 0:
		case step == sz:
			c.set(t, i, 0)
			c.release(e, level)
		case level == 0 || e&PTEHuge != 0:
			return ErrCoWAlign
		default:
			ct, err := c.private(t, i)
			if err != nil {
				return err
			}
			if err := c.drop(ct, level-1, s, s+step); err != nil {
				return err
			}
		}
		s += step
	}
	return nil
}

// release drops the reference entry e (at level) held on its target.
func (c *CoW) release(e uint64, level uint) {
	pa := uintptr(e & PTEAddr)
	if !c.Refs.Dec(pa) {
		return
	}
	if level == 0 {
		c.deferFree(pa, 0)
		return
	}
	if e&PTEHuge != 0 {
		c.deferFree(pa, 9)
		return
	}
	t := c.PT.table(pa)
	for j := range t {
		if t[j]&PTEPresent != 0 {
			c.release(t[j], level-1)
		}
	}
	c.deferFree(pa, 0)
}

func (c *CoW) deferFree(pa uintptr, order int) {
	if c.npending == pendingMax {
		c.FlushAndFree()
	}
	c.pending[c.npending] = pendingFree{pa, order}
	c.npending++
}

// FlushAndFree flushes every CPU's TLB and frees what was waiting for it.
// Coherent, it only frees.
func (c *CoW) FlushAndFree() {
	if c.Flush != nil && !c.Coherent {
		c.Flush()
		c.Stats.Flushes++
	}
	if c.npending > 0 {
		c.freeGen++
	}
	for _, p := range c.pending[:c.npending] {
		if c.PT.Frames.Put(p.pa, p.order) == nil {
			c.Stats.FramesFreed += 1 << p.order
		}
	}
	c.npending = 0
}

// Pending reports how many frames wait for a flush.
func (c *CoW) Pending() int { return c.npending }

// Restore makes the parts of [va, va+n) (2 MiB aligned) that nothing
// shares any more writable again, so that writes after the last snapshot
// is gone do not fault. Entries whose target is still shared keep W clear.
// A table that gets W back is first made safe as a whole: W is cleared in
// any of its entries whose target is still shared (a table reached only
// through W=0 may have W set towards children it shares with a copy). No
// TLB flush is needed for the permissions: they only go up where they
// change for this range's owner. A table in which many entries change is
// rebuilt instead (see rebuildMin); the old ones wait for the caller's
// FlushAndFree.
func (c *CoW) Restore(va, n uintptr) error {
	if (va|n)&(HugeSize-1) != 0 || va+n < va {
		return ErrCoWAlign
	}
	c.restore(c.PT.table(c.PT.Root), 3, va, va+n)
	// Only now is no live table pointing at a replaced one: a replaced
	// child stays reachable through its old parent until that parent's
	// own replacement is written.
	for _, old := range c.retired[:c.nretired] {
		c.deferFree(old, 0)
	}
	c.nretired = 0
	return nil
}

// rebuildMin: a table in which more entries than this change is rebuilt
// in a fresh frame (not live: its writes cost nothing) and swapped in by
// one write of its parent entry, instead of being edited in place, where
// each entry written is trapped by a shadow MMU (~60 µs under PVM).
// Restoring a 4 GiB source after its last snapshot went from ~2,000
// trapped writes to 4.
const (
	rebuildMin = 8
	retiredMax = 64 // tables replaced in one Restore; beyond, edit in place
)

// restore handles the entries of the write-reachable table t in [s, end).
func (c *CoW) restore(t *[512]uint64, level uint, s, end uintptr) {
	sz := span(level)
	for s < end {
		step := min(sz-s&(sz-1), end-s)
		i := idx(s, level)
		e := t[i]
		lo := s
		s += step
		if e&PTEPresent == 0 || c.Refs.Extra(uintptr(e&PTEAddr)) != 0 {
			continue
		}
		leaf := level == 0 || e&PTEHuge != 0
		nx := e | PTEWrite
		switch {
		case leaf:
		case e&PTEWrite != 0 && step != sz:
			// Reached through W=1 already: only the part in range.
			c.restore(c.PT.table(uintptr(e&PTEAddr)), level-1, lo, lo+step)
		default:
			// The whole table below is made safe (for a table reached
			// through W=1 that is the same as restoring it).
			nx = c.safeChild(e, level)
		}
		if nx != e {
			c.set(t, i, nx)
		}
	}
}

// safeChild returns entry e (at level, its target exclusive) with W set,
// after making the table it points at, if any, safe to reach through W=1
// entries: in place, or as a rebuilt copy that the returned entry points
// at (the old table is then on c.retired).
func (c *CoW) safeChild(e uint64, level uint) uint64 {
	if level > 0 && e&PTEHuge == 0 {
		old := uintptr(e & PTEAddr)
		ct := c.PT.table(old)
		if c.safeChanges(ct) > rebuildMin {
			if pa, ok := c.buildSafe(old, level-1); ok {
				return uint64(pa) | e&^PTEAddr | PTEWrite
			}
		}
		c.makeSafe(ct, level-1)
	}
	return e | PTEWrite
}

// safeChanges counts the entries of t whose W bit is not yet what reach
// through W=1 needs (clear towards shared targets, set towards exclusive
// ones).
func (c *CoW) safeChanges(t *[512]uint64) int {
	n := 0
	for _, e := range t {
		if e&PTEPresent != 0 && (c.Refs.Extra(uintptr(e&PTEAddr)) != 0) == (e&PTEWrite != 0) {
			n++
		}
	}
	return n
}

// makeSafe edits the whole table t (its entries at level) so that it may
// be reached through W=1 entries: shared targets get W clear, exclusive
// ones W set.
func (c *CoW) makeSafe(t *[512]uint64, level uint) {
	for i := range t {
		e := t[i]
		if e&PTEPresent == 0 {
			continue
		}
		nx := e &^ PTEWrite
		if c.Refs.Extra(uintptr(e&PTEAddr)) == 0 {
			nx = c.safeChild(e, level)
		}
		if nx != e {
			c.set(t, uintptr(i), nx)
		}
	}
}

// buildSafe returns a fresh copy of the exclusive table at old (its
// entries at level) made safe as makeSafe would, without a live write.
// The references old held pass to the copy, and old goes on c.retired.
// It reports false, having changed nothing, when no frame or retired slot
// is left.
func (c *CoW) buildSafe(old uintptr, level uint) (uintptr, bool) {
	if c.nretired == retiredMax {
		return 0, false
	}
	pa, err := c.PT.Frames.Get(0, false)
	if err != nil {
		return 0, false
	}
	c.retired[c.nretired] = old
	c.nretired++
	ot, nt := c.PT.table(old), c.PT.table(pa)
	for j := range ot {
		x := ot[j]
		if x&PTEPresent != 0 {
			if c.Refs.Extra(uintptr(x&PTEAddr)) != 0 {
				x &^= PTEWrite
			} else {
				x = c.safeChild(x, level)
			}
		}
		nt[j] = x
	}
	c.Stats.TableRebuilds++
	return pa, true
}
