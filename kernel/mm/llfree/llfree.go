// Package llfree is the kernel's physical frame allocator, after LLFree
// (Wrenger et al., ATC'23): lock-free, per-CPU-aware and huge-frame aware.
// It is pure logic over caller-provided metadata memory, so the same code
// is unit-tested on Linux (metadata in a Go slice) and runs in the guest
// kernel (metadata in guest memory).
//
// Frames are numbered 0..TotalFrames()-1 relative to the managed region;
// order k means 2^k contiguous frames whose first frame number is a
// multiple of 2^k. Alignment is relative to the region: the kernel must
// start the region on a 2 MiB (for order 9) or 1 GiB (for order 18)
// physical boundary for the frames to be physically aligned.
//
// # Trap-context constraints (this file runs inside the guest kernel)
//
//   - no allocation after Init (no make/new/append/maps, no escaping
//     closures, no interface conversions), no goroutines, channels, defer,
//     locks, fmt or log; no panics on any path (errors are the
//     package-level values below);
//   - all shared state lives in the metadata block and is touched only with
//     sync/atomic; the Allocator struct itself is written only by Init;
//   - small functions, no large locals (128 KiB kernel stacks);
//   - the caller guarantees that `cpu` names the current CPU and that the
//     call is not preempted by another call with the same `cpu`. Get and Put
//     may run concurrently on different CPUs; Init, Check and the Debug
//     field must not race with them.
//
// # Layout of the metadata block (64-byte aligned internally)
//
//	locals   cpus × 64 B   word 0: reservation (tree+1)<<32 | frames held
//	                       word 1: area hint (owner-only, plain)
//	trees    ntrees × 8 B  free count (bits 0..31) | reserved flag (bit 32)
//	children nareas × 8 B  free count (bits 0..15) | huge (bit 16) | giant (bit 17)
//	bits     nareas × 64 B 512 bits per 2 MiB area, 1 = allocated
//	orders   frames/8 × 4 B (Debug only) 4 bits per frame: order+1 of the
//	                       allocation starting there (order 18 stored as 11)
//
// # Invariants (at quiescence, i.e. when no Get/Put is in flight; Check
// verifies them)
//
//  1. For an area without the huge flag, child.free == number of zero bits
//     among its frames that exist (bits of frames past TotalFrames are
//     permanently 1).
//  2. For an area with the huge flag, child.free == 0 and all its bits are 0:
//     the whole area is one order-9 allocation (or part of an order-18 one,
//     then the giant flag is set too, on all 512 areas of the aligned group).
//  3. For each tree, tree.free + (frames held by the CPU whose reservation
//     names it) == sum of child.free over its areas; the reserved flag is set
//     iff exactly one CPU's reservation names the tree.
//
// While operations are in flight, counters may under-count but never
// over-count what the bits allow: Get decrements tree/local counter, then
// the child counter, then sets bits; Put clears bits, then increments the
// child counter, then the tree counter. A successful counter decrement is a
// claim: a tree counter ≥ n guarantees n free frames among its children.
//
// # Huge-frame recovery (anti-fragmentation)
//
// Small requests (orders 0..8) reserve partially used trees before fully
// free ones and, within a tree, take partially used areas before fully free
// ones. So 4 KiB frames cluster in areas that are already broken, and fully
// free areas stay whole for order-9 requests. When every frame of an area
// is freed its child counter returns to 512 and it is a huge frame again;
// no merge step is needed (there is no buddy list to repair).
package llfree

import (
	"errors"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

const (
	// AreaOrder is the order of one area: 2^9 frames = 2 MiB.
	AreaOrder = 9
	// GiantOrder is the order of a 1 GiB frame.
	GiantOrder = 18
	// MaxFrames bounds the region (2^40 frames = 4 PiB).
	MaxFrames = 1 << 40
	// MaxCPUs bounds the cpus argument of Init (reservation words are
	// per CPU and cheap; the bound only catches nonsense).
	MaxCPUs = 1024

	areaFrames = 1 << AreaOrder
	treeAreas  = 16 // 16 areas = 32 MiB per tree
	treeFrames = treeAreas * areaFrames
	giantAreas = 1 << (GiantOrder - AreaOrder) // 512
	giantTrees = giantAreas / treeAreas        // 32

	localBytes = 64 // one cache line per CPU
	bitsBytes  = 64 // 512 bits per area

	childCount = 0xffff
	childHuge  = 1 << 16
	childGiant = 1 << 17

	treeCount    = 0xffffffff
	treeReserved = 1 << 32

	// reserveTries bounds how often one Get moves its reservation before
	// falling back to the global scan.
	reserveTries = 3
)

// Errors. They are values, so returning them allocates nothing.
var (
	ErrNoMemory   = errors.New("llfree: out of memory")
	ErrDoubleFree = errors.New("llfree: double free")
	ErrWrongOrder = errors.New("llfree: free with the wrong order")
	ErrInvalid    = errors.New("llfree: invalid argument (cpu, order, frame range or alignment)")
	ErrMetaSize   = errors.New("llfree: metadata block too small")
)

// Allocator is one LLFree instance. The zero value is ready for Init; it
// may be a package global. After Init it holds only scalars and the
// address of the metadata block.
type Allocator struct {
	// Debug records the order of every allocation (4 bits per frame in the
	// metadata, see MetaSizeDebug) so that Put can reject a free whose
	// order or start frame differs from the allocation's. Set it before
	// Init. Without it, Put still detects what the bits and flags tell:
	// see Put.
	Debug bool

	meta   unsafe.Pointer // 64-byte aligned start of the metadata
	frames uint64
	nareas uint64
	ntrees uint64
	cpus   int

	offTrees, offChildren, offBits, offOrders uintptr
}

func divUp(a, b uint64) uint64 { return (a + b - 1) / b }

// layout returns the offsets of each metadata section and the total size.
func layout(frames uint64, cpus int) (trees, children, bitsOff, orders, end uintptr) {
	nareas := divUp(frames, areaFrames)
	ntrees := divUp(nareas, treeAreas)
	trees = uintptr(cpus) * localBytes
	children = trees + uintptr(ntrees)*8
	bitsOff = (children + uintptr(nareas)*8 + 63) &^ 63
	orders = bitsOff + uintptr(nareas)*bitsBytes
	end = orders
	return
}

// MetaSize is the number of bytes of metadata Init needs for frames frames
// and cpus CPUs (including 64 bytes of slack so that meta need not be
// aligned). About 0.2% of memory: 80 bytes per 2 MiB.
func MetaSize(frames uint64, cpus int) uintptr {
	_, _, _, _, end := layout(frames, cpus)
	return end + 64
}

// MetaSizeDebug is MetaSize plus the order map Debug needs (4 bits per
// frame, 0.012% of memory).
func MetaSizeDebug(frames uint64, cpus int) uintptr {
	return MetaSize(frames, cpus) + uintptr(divUp(frames, 8))*4
}

// Init takes over meta (any contents, any alignment) and marks all frames
// free. It is the only method that must not run concurrently with others.
func (a *Allocator) Init(meta []byte, frames uint64, cpus int) error {
	if frames == 0 || cpus <= 0 || cpus > MaxCPUs || frames > MaxFrames {
		return ErrInvalid
	}
	need := MetaSize(frames, cpus)
	if a.Debug {
		need = MetaSizeDebug(frames, cpus)
	}
	if uintptr(len(meta)) < need {
		return ErrMetaSize
	}
	start := unsafe.Pointer(unsafe.SliceData(meta))
	pad := (64 - uintptr(start)&63) & 63
	a.meta = unsafe.Add(start, pad)
	a.frames = frames
	a.nareas = divUp(frames, areaFrames)
	a.ntrees = divUp(a.nareas, treeAreas)
	a.cpus = cpus
	a.offTrees, a.offChildren, a.offBits, a.offOrders, _ = layout(frames, cpus)
	clear(meta[pad : pad+need-64])
	for t := uint64(0); t < a.ntrees; t++ {
		a.tree(t).Store(a.treeCap(t))
	}
	for ar := uint64(0); ar < a.nareas; ar++ {
		a.child(ar).Store(a.areaCap(ar))
	}
	if tail := frames % areaFrames; tail != 0 {
		// Frames past the end are permanently allocated bits.
		last := a.nareas - 1
		for i := tail; i < areaFrames; i++ {
			a.word(last, i/64).Or(1 << (i % 64))
		}
	}
	return nil
}

// ---- metadata accessors ------------------------------------------------

func (a *Allocator) local(cpu int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Add(a.meta, uintptr(cpu)*localBytes))
}

// hint is the owner-only area hint of cpu (plain memory: only that CPU
// touches it).
func (a *Allocator) hint(cpu int) *uint64 {
	return (*uint64)(unsafe.Add(a.meta, uintptr(cpu)*localBytes+8))
}

func (a *Allocator) tree(t uint64) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Add(a.meta, a.offTrees+uintptr(t)*8))
}

func (a *Allocator) child(ar uint64) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Add(a.meta, a.offChildren+uintptr(ar)*8))
}

func (a *Allocator) word(ar, w uint64) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Add(a.meta, a.offBits+uintptr(ar)*bitsBytes+uintptr(w)*8))
}

func (a *Allocator) orderWord(frame uint64) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Add(a.meta, a.offOrders+uintptr(frame/8)*4))
}

// areaCap is the number of frames that exist in area ar.
func (a *Allocator) areaCap(ar uint64) uint64 {
	if end := (ar + 1) * areaFrames; end > a.frames {
		return a.frames - ar*areaFrames
	}
	return areaFrames
}

// treeCap is the number of frames that exist in tree t.
func (a *Allocator) treeCap(t uint64) uint64 {
	if end := (t + 1) * treeFrames; end > a.frames {
		return a.frames - t*treeFrames
	}
	return treeFrames
}

func (a *Allocator) treeAreaRange(t uint64) (lo, hi uint64) {
	lo = t * treeAreas
	hi = min(lo+treeAreas, a.nareas)
	return
}

// ---- statistics ----------------------------------------------------------

// TotalFrames is the number of frames managed.
func (a *Allocator) TotalFrames() uint64 { return a.frames }

// FreeFrames is the number of free frames (a snapshot; exact at quiescence).
func (a *Allocator) FreeFrames() uint64 {
	var n uint64
	for t := uint64(0); t < a.ntrees; t++ {
		n += a.tree(t).Load() & treeCount
	}
	for c := 0; c < a.cpus; c++ {
		n += a.local(c).Load() & treeCount
	}
	return n
}

// FreeHuge is the number of fully free 2 MiB areas (a snapshot).
func (a *Allocator) FreeHuge() uint64 {
	var n uint64
	for ar := uint64(0); ar < a.nareas; ar++ {
		if a.child(ar).Load() == areaFrames {
			n++
		}
	}
	return n
}

// ---- Get -----------------------------------------------------------------

// Get allocates 2^order frames (order 0..9, or 18) for the current CPU and
// returns the first frame number. It never blocks: it retries CAS failures
// and returns ErrNoMemory when no suitable block exists.
func (a *Allocator) Get(cpu int, order int) (uint64, error) {
	if cpu < 0 || cpu >= a.cpus {
		return 0, ErrInvalid
	}
	var f uint64
	var ok bool
	switch {
	case order >= 0 && order < AreaOrder:
		f, ok = a.getSmall(cpu, order)
	case order == AreaOrder:
		f, ok = a.getHuge(cpu)
	case order == GiantOrder:
		f, ok = a.getGiant()
	default:
		return 0, ErrInvalid
	}
	if !ok {
		return 0, ErrNoMemory
	}
	if a.Debug {
		a.setOrder(f, order)
	}
	return f, nil
}

// getSmall serves orders 0..8: from the CPU's reserved tree, else from a
// newly reserved tree, else by a global scan, else after draining every
// CPU's reservation back into the trees.
func (a *Allocator) getSmall(cpu, order int) (uint64, bool) {
	n := uint64(1) << order
	for try := 0; try < reserveTries; try++ {
		t, ok := a.takeLocal(cpu, n)
		if !ok {
			if !a.reserve(cpu, n) {
				break
			}
			continue
		}
		if f, ok := a.searchTree(cpu, t, order); ok {
			return f, true
		}
		// The tree has the frames but not an aligned block of this
		// order: give them back and move on to another tree.
		a.tree(t).Add(n)
		a.unreserve(cpu)
	}
	if f, ok := a.scanAll(cpu, order); ok {
		return f, true
	}
	a.drain()
	return a.scanAll(cpu, order)
}

// takeLocal claims n frames from cpu's reservation, syncing the frees
// that arrived at the reserved tree once if the reservation runs short.
func (a *Allocator) takeLocal(cpu int, n uint64) (uint64, bool) {
	l := a.local(cpu)
	synced := false
	for {
		w := l.Load()
		if w == 0 {
			return 0, false
		}
		if w&treeCount >= n {
			if l.CompareAndSwap(w, w-n) {
				return w>>32 - 1, true
			}
			continue // stolen by drain meanwhile
		}
		if synced || !a.sync(cpu, w>>32-1) {
			return 0, false
		}
		synced = true
	}
}

// sync moves the free count that other CPUs' frees added to reserved tree
// t into cpu's reservation. It reports whether anything moved.
func (a *Allocator) sync(cpu int, t uint64) bool {
	tr := a.tree(t)
	for {
		tw := tr.Load()
		if tw&treeReserved == 0 || tw&treeCount == 0 {
			return false
		}
		if tr.CompareAndSwap(tw, treeReserved) {
			got := tw & treeCount
			l := a.local(cpu)
			for {
				w := l.Load()
				if w>>32 != t+1 {
					tr.Add(got) // reservation was drained: give back
					return false
				}
				if l.CompareAndSwap(w, w+got) {
					return true
				}
			}
		}
	}
}

// reserve drops cpu's reservation and reserves another tree holding at
// least n free frames: first a partially used one with a good number of
// free frames, then any partially used one (keeping whole trees, and with
// them whole areas, for huge requests), then any.
func (a *Allocator) reserve(cpu int, n uint64) bool {
	a.unreserve(cpu)
	start := uint64(cpu) * a.ntrees / uint64(a.cpus)
	for pass := 0; pass < 3; pass++ {
		for i := uint64(0); i < a.ntrees; i++ {
			t := (start + i) % a.ntrees
			tr := a.tree(t)
			tw := tr.Load()
			c := tw & treeCount
			if tw&treeReserved != 0 || c < n {
				continue
			}
			if pass < 2 && c == a.treeCap(t) || pass == 0 && c < treeFrames/16 {
				continue
			}
			if tr.CompareAndSwap(tw, treeReserved) {
				a.local(cpu).Store((t+1)<<32 | c)
				return true
			}
		}
	}
	return false
}

// unreserve returns cpu's reservation (if any) to its tree.
func (a *Allocator) unreserve(cpu int) {
	l := a.local(cpu)
	for {
		w := l.Load()
		if w == 0 {
			return
		}
		if l.CompareAndSwap(w, 0) {
			a.release(w>>32-1, w&treeCount)
			return
		}
	}
}

// release adds c frames back to reserved tree t and clears its flag. Only
// the one who swapped a reservation word to 0 calls it.
func (a *Allocator) release(t, c uint64) {
	tr := a.tree(t)
	for {
		tw := tr.Load()
		if tr.CompareAndSwap(tw, (tw&treeCount)+c) {
			return
		}
	}
}

// drain steals every CPU's reservation back into the trees so that a
// global scan sees all free frames. Used only when memory is short.
func (a *Allocator) drain() {
	for c := 0; c < a.cpus; c++ {
		a.unreserve(c) // the same CAS protocol is safe from any CPU
	}
}

// scanAll claims n frames directly from any tree's counter (reserved or
// not: tree.free + local stays equal to the children's sum) and searches
// that tree.
func (a *Allocator) scanAll(cpu, order int) (uint64, bool) {
	n := uint64(1) << order
	start := uint64(cpu) * a.ntrees / uint64(a.cpus)
	for i := uint64(0); i < a.ntrees; i++ {
		t := (start + i) % a.ntrees
		if !a.claimTree(t, n) {
			continue
		}
		if f, ok := a.searchTree(cpu, t, order); ok {
			return f, true
		}
		a.tree(t).Add(n)
	}
	return 0, false
}

// claimTree decrements tree t's free count by n if it has that many.
func (a *Allocator) claimTree(t, n uint64) bool {
	tr := a.tree(t)
	for {
		tw := tr.Load()
		if tw&treeCount < n {
			return false
		}
		if tr.CompareAndSwap(tw, tw-n) {
			return true
		}
	}
}

// searchTree finds an aligned free block of 2^order frames in tree t, the
// frames already claimed from the tree's counter. Partially used areas
// first, starting at the CPU's hint; fully free areas last.
func (a *Allocator) searchTree(cpu int, t uint64, order int) (uint64, bool) {
	n := uint64(1) << order
	lo, hi := a.treeAreaRange(t)
	// The hint is the bit-field word (area*8 + word) of the CPU's last
	// allocation: start there, so a filling area is not rescanned.
	h := a.hint(cpu)
	first, firstWord := *h/8, *h%8
	if first < lo || first >= hi {
		first, firstWord = lo, 0
	}
	for pass := 0; pass < 2; pass++ {
		for i := uint64(0); i < hi-lo; i++ {
			ar := lo + (first-lo+i)%(hi-lo)
			if !a.claimChild(ar, n, pass == 1) {
				continue
			}
			w0 := uint64(0)
			if ar == first {
				w0 = firstWord
			}
			if f, ok := a.searchArea(ar, order, w0); ok {
				*h = f / 64
				return f, true
			}
			a.child(ar).Add(n)
		}
	}
	return 0, false
}

// claimChild decrements area ar's free count by n. In the first pass only
// partially used areas qualify, in the second only fully free ones.
func (a *Allocator) claimChild(ar, n uint64, whole bool) bool {
	ch := a.child(ar)
	for {
		cw := ch.Load()
		if cw&(childHuge|childGiant) != 0 || cw < n {
			return false
		}
		if (cw == a.areaCap(ar) && a.areaCap(ar) == areaFrames) != whole {
			return false
		}
		if ch.CompareAndSwap(cw, cw-n) {
			return true
		}
	}
}

// alignedMask[k] has a 1 at every bit position that is a multiple of 2^k.
var alignedMask = [6]uint64{
	0xffffffffffffffff, 0x5555555555555555, 0x1111111111111111,
	0x0101010101010101, 0x0001000100010001, 0x0000000100000001,
}

// searchArea sets the bits of an aligned free block of 2^order frames in
// area ar, scanning its words from w0 on, and returns its first frame.
func (a *Allocator) searchArea(ar uint64, order int, w0 uint64) (uint64, bool) {
	if order >= 6 {
		return a.searchWords(ar, uint64(1)<<(order-6))
	}
	size := uint(1) << order
	mask := uint64(1)<<size - 1
	for i := uint64(0); i < bitsBytes/8; i++ {
		w := (w0 + i) % (bitsBytes / 8)
		bw := a.word(ar, w)
		for {
			old := bw.Load()
			// free has bit i set iff bits i..i+size-1 are all free.
			free := ^old
			for s := uint(1); s < size; s <<= 1 {
				free &= free >> s
			}
			free &= alignedMask[order]
			if free == 0 {
				break
			}
			i := uint(bits.TrailingZeros64(free))
			if bw.CompareAndSwap(old, old|mask<<i) {
				return ar*areaFrames + w*64 + uint64(i), true
			}
		}
	}
	return 0, false
}

// searchWords claims k aligned, entirely free 64-bit words (orders 6..8).
// Words are claimed one by one and released again if a later one is
// taken; other allocators only ever see a word go from 0 to full, so this
// is a claim that can fail, never an inconsistent one.
func (a *Allocator) searchWords(ar, k uint64) (uint64, bool) {
	for w := uint64(0); w < bitsBytes/8; w += k {
		got := uint64(0)
		for got < k && a.word(ar, w+got).CompareAndSwap(0, ^uint64(0)) {
			got++
		}
		if got == k {
			return ar*areaFrames + w*64, true
		}
		for j := uint64(0); j < got; j++ {
			a.word(ar, w+j).Store(0)
		}
	}
	return 0, false
}

// getHuge allocates one whole free area. Unreserved trees first, so that
// CPUs' small-frame reservations are disturbed only when needed.
func (a *Allocator) getHuge(cpu int) (uint64, bool) {
	for round := 0; round < 2; round++ {
		if round == 1 {
			a.drain()
		}
		start := uint64(cpu) * a.ntrees / uint64(a.cpus)
		for i := uint64(0); i < a.ntrees; i++ {
			t := (start + i) % a.ntrees
			if !a.claimTree(t, areaFrames) {
				continue
			}
			if f, ok := a.hugeInTree(t); ok {
				return f, true
			}
			a.tree(t).Add(areaFrames)
		}
	}
	return 0, false
}

func (a *Allocator) hugeInTree(t uint64) (uint64, bool) {
	lo, hi := a.treeAreaRange(t)
	for ar := lo; ar < hi; ar++ {
		if a.child(ar).CompareAndSwap(areaFrames, childHuge) {
			return ar * areaFrames, true
		}
	}
	return 0, false
}

// getGiant allocates an aligned group of 512 areas (1 GiB) whose 32 trees
// are unreserved and entirely free. It claims whole trees, then flags the
// children; any failure rolls back what was claimed.
func (a *Allocator) getGiant() (uint64, bool) {
	groups := a.frames >> GiantOrder
	for round := 0; round < 2; round++ {
		if round == 1 {
			a.drain()
		}
		for g := uint64(0); g < groups; g++ {
			if a.claimGiant(g) {
				return g << GiantOrder, true
			}
		}
	}
	return 0, false
}

func (a *Allocator) claimGiant(g uint64) bool {
	t0 := g * giantTrees
	for i := uint64(0); i < giantTrees; i++ {
		if !a.tree(t0+i).CompareAndSwap(treeFrames, 0) {
			for j := uint64(0); j < i; j++ {
				a.tree(t0 + j).Add(treeFrames)
			}
			return false
		}
	}
	ar0 := g * giantAreas
	for i := uint64(0); i < giantAreas; i++ {
		if !a.child(ar0+i).CompareAndSwap(areaFrames, childHuge|childGiant) {
			// Cannot happen while invariant 3 holds; roll back anyway.
			for j := uint64(0); j < i; j++ {
				a.child(ar0 + j).Store(areaFrames)
			}
			for j := uint64(0); j < giantTrees; j++ {
				a.tree(t0 + j).Add(treeFrames)
			}
			return false
		}
	}
	return true
}

// ---- Put -----------------------------------------------------------------

// Put frees the 2^order frames starting at frame. cpu is the current CPU
// (frees go to the tree's shared counter, whichever CPU reserved it).
//
// Always detected, from the metadata and the atomics' old values, without
// changing anything when detected:
//   - order < 9: the area carries the huge flag → ErrWrongOrder; none of
//     the block's bits set → ErrDoubleFree; some but not all → ErrWrongOrder
//     (the block spans frames of different allocations or free ones).
//   - order 9: the area is fully free → ErrDoubleFree; the area has small
//     frames or the giant flag → ErrWrongOrder.
//   - order 18: first area fully free → ErrDoubleFree; any area of the
//     group not flagged giant → ErrWrongOrder.
//
// With Debug, additionally: the order recorded at Get must match (freeing
// a sub-block, e.g. Get order 3 then Put order 0 of its first frame, or an
// interior frame of a block, sets bits that look allocated, so only the
// order map tells) → ErrWrongOrder; no order recorded → ErrDoubleFree.
func (a *Allocator) Put(cpu int, frame uint64, order int) error {
	if cpu < 0 || cpu >= a.cpus || order < 0 || (order > AreaOrder && order != GiantOrder) {
		return ErrInvalid
	}
	n := uint64(1) << order
	if frame&(n-1) != 0 || frame >= a.frames || a.frames-frame < n {
		return ErrInvalid
	}
	if a.Debug {
		// Clear the recorded order before the frames become free, or
		// a concurrent Get of them could record its order first.
		if err := a.takeOrder(frame, order); err != nil {
			return err
		}
	}
	var err error
	switch {
	case order < AreaOrder:
		err = a.putSmall(frame, order)
	case order == AreaOrder:
		err = a.putHuge(frame)
	default:
		err = a.putGiant(frame)
	}
	if err != nil && a.Debug {
		a.setOrder(frame, order)
	}
	return err
}

func (a *Allocator) putSmall(frame uint64, order int) error {
	ar := frame / areaFrames
	if a.child(ar).Load()&childHuge != 0 {
		return ErrWrongOrder
	}
	if order >= 6 {
		if err := a.putWords(ar, frame%areaFrames/64, uint64(1)<<(order-6)); err != nil {
			return err
		}
	} else {
		i := frame % 64
		mask := (uint64(1)<<(uint(1)<<order) - 1) << i
		bw := a.word(ar, frame%areaFrames/64)
		for {
			old := bw.Load()
			if old&mask != mask {
				if old&mask == 0 {
					return ErrDoubleFree
				}
				return ErrWrongOrder
			}
			if bw.CompareAndSwap(old, old&^mask) {
				break
			}
		}
	}
	n := uint64(1) << order
	a.child(ar).Add(n)
	a.tree(ar / treeAreas).Add(n)
	return nil
}

// putWords frees k whole words starting at word w of area ar. All must be
// full; they can only change under us through another (buggy) free of the
// same frames.
func (a *Allocator) putWords(ar, w, k uint64) error {
	full := 0
	for j := uint64(0); j < k; j++ {
		switch a.word(ar, w+j).Load() {
		case ^uint64(0):
			full++
		case 0:
		default:
			return ErrWrongOrder
		}
	}
	if full == 0 {
		return ErrDoubleFree
	}
	if uint64(full) != k {
		return ErrWrongOrder
	}
	for j := uint64(0); j < k; j++ {
		if !a.word(ar, w+j).CompareAndSwap(^uint64(0), 0) {
			return ErrDoubleFree // a concurrent free of the same frames won
		}
	}
	return nil
}

func (a *Allocator) putHuge(frame uint64) error {
	ar := frame / areaFrames
	ch := a.child(ar)
	if !ch.CompareAndSwap(childHuge, areaFrames) {
		cw := ch.Load()
		if cw == a.areaCap(ar) && cw&(childHuge|childGiant) == 0 {
			return ErrDoubleFree
		}
		return ErrWrongOrder
	}
	a.tree(ar / treeAreas).Add(areaFrames)
	return nil
}

func (a *Allocator) putGiant(frame uint64) error {
	ar0 := frame / areaFrames
	for i := uint64(0); i < giantAreas; i++ {
		if a.child(ar0+i).Load() != childHuge|childGiant {
			if i == 0 && a.child(ar0).Load() == areaFrames {
				return ErrDoubleFree
			}
			return ErrWrongOrder
		}
	}
	for i := uint64(0); i < giantAreas; i++ {
		a.child(ar0 + i).Store(areaFrames)
	}
	t0 := ar0 / treeAreas
	for j := uint64(0); j < giantTrees; j++ {
		a.tree(t0 + j).Add(treeFrames)
	}
	return nil
}

// ---- Debug order map -------------------------------------------------------

func orderCode(order int) uint32 {
	switch {
	case order < 0:
		return 0
	case order == GiantOrder:
		return 11
	default:
		return uint32(order) + 1
	}
}

// setOrder records order (or clears with -1) at frame's nibble.
func (a *Allocator) setOrder(frame uint64, order int) {
	ow := a.orderWord(frame)
	shift := (frame % 8) * 4
	for {
		old := ow.Load()
		nw := old&^(0xf<<shift) | orderCode(order)<<shift
		if ow.CompareAndSwap(old, nw) {
			return
		}
	}
}

// takeOrder clears frame's recorded order if it is order.
func (a *Allocator) takeOrder(frame uint64, order int) error {
	ow := a.orderWord(frame)
	shift := (frame % 8) * 4
	for {
		old := ow.Load()
		switch old >> shift & 0xf {
		case orderCode(order):
			if ow.CompareAndSwap(old, old&^(0xf<<shift)) {
				return nil
			}
			continue
		case 0:
			if a.isFree(frame) {
				return ErrDoubleFree
			}
		}
		return ErrWrongOrder
	}
}

// isFree reports whether frame is currently free according to the bits
// and flags.
func (a *Allocator) isFree(frame uint64) bool {
	ar := frame / areaFrames
	if a.child(ar).Load()&childHuge != 0 {
		return false
	}
	i := frame % areaFrames
	return a.word(ar, i/64).Load()&(1<<(i%64)) == 0
}
