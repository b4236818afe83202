// Package vrange is the kernel's core-local virtual address range
// allocator, in the "superblock" style of the unikernel/DBMS talk: the
// kernel hands it one large window [lo, hi); each CPU takes superblocks
// (1 GiB by default) from a shared pool with atomics and carves ranges of
// any page-aligned size and alignment from its own superblock and its own
// free list, without touching shared state. Requests larger than a
// superblock (or aligned more strictly) take whole superblocks from the
// pool directly.
//
// # Trap-context constraints (this file runs inside the guest kernel)
//
//   - no allocation (all state is in fixed arrays inside Allocator, so it
//     can be a package global), no goroutines, channels, defer, locks, fmt
//     or log; no panics (errors are the package-level values below);
//   - the shared pool is touched only with sync/atomic; per-CPU state is
//     touched only by its CPU: the caller guarantees that `cpu` names the
//     current CPU and that no other call with the same `cpu` runs
//     meanwhile. Per-CPU statistics are atomics so that Stats may read
//     them from any CPU.
//
// # Invariants (at quiescence; Check verifies them)
//
//  1. Each CPU's free list is sorted, its spans non-empty, page-aligned,
//     disjoint and not touching (touching spans are merged on insert).
//  2. A CPU's current superblock has a non-empty bump region [cur, end)
//     (a used-up one stops being current at once).
//  3. Every free span and every CPU's bump region [cur, end) lies inside
//     superblocks marked used in the pool, and no two of them (across
//     all CPUs) overlap; a free span never touches its CPU's bump region
//     from below (it would have been folded back into it).
//  4. Bytes of used superblocks == allocated + free-listed + bump
//     remainders + dropped (see Stats.DroppedBytes).
//
// # What it does not do (honest limits)
//
//   - No coalescing across CPUs: a range freed on another CPU than the one
//     that allocated it goes to the freeing CPU's list. A superblock
//     returns to the pool only when one CPU's list holds all of it.
//   - Free lists have FreeSlots entries per CPU. When a free needs a slot
//     and none is left, the smallest span (possibly the new one) is
//     dropped, i.e. leaked for good, and counted in Stats.DroppedBytes
//     rather than failing the free.
//   - Free trusts size: freeing a range that is not allocated, or with a
//     different size, is not detected beyond the bounds/alignment checks
//     and an overlap check against the freeing CPU's own free list.
//   - A CPU never hands its current superblock's unused tail to another
//     CPU; with many CPUs and a small window the pool runs dry earlier
//     than a global allocator would.
package vrange

import (
	"errors"
	"math/bits"
	"sync/atomic"
)

const (
	PageSize          = 4096
	DefaultSuperblock = 1 << 30
	MaxCPUs           = 64
	// MaxSuperblocks bounds the window: 64 Ki superblocks, i.e. 64 TiB
	// with the default superblock size.
	MaxSuperblocks = 1 << 16
	// FreeSlots is the number of free spans each CPU keeps.
	FreeSlots = 256
)

var (
	ErrNoSpace = errors.New("vrange: address window exhausted")
	ErrInvalid = errors.New("vrange: invalid argument (cpu, size, alignment or range)")
	ErrOverlap = errors.New("vrange: freed range overlaps a free range")
)

type span struct{ start, end uintptr }

// perCPU is one CPU's state. Only that CPU touches the plain fields.
type perCPU struct {
	cur, end uintptr // bump region of the current superblock; empty if cur == end
	base     uintptr // current superblock's start (valid if hasSB)
	hasSB    bool
	n        int
	free     [FreeSlots]span

	allocated atomic.Int64 // bytes handed out by this CPU minus bytes freed on it
	listed    atomic.Int64 // bytes in the free list
	dropped   atomic.Int64
	_         [64]byte // keep neighbours' hot fields off this line
}

// Allocator is one range allocator; the zero value is ready for Init.
type Allocator struct {
	lo, hi  uintptr
	sbShift uint
	nsb     uint64
	cpus    int
	pool    [MaxSuperblocks / 64]atomic.Uint64 // bit set = superblock in use
	pcpu    [MaxCPUs]perCPU
}

// Init sets the window [lo, hi) and the superblock size (a power of two
// multiple of PageSize; 0 means DefaultSuperblock). lo is rounded up and hi
// down to superblock boundaries. Not concurrent with other methods.
func (a *Allocator) Init(lo, hi uintptr, cpus int, superblock uintptr) error {
	if superblock == 0 {
		superblock = DefaultSuperblock
	}
	if superblock < PageSize || superblock&(superblock-1) != 0 || cpus <= 0 || cpus > MaxCPUs {
		return ErrInvalid
	}
	lo = alignUp(lo, superblock)
	hi &^= superblock - 1
	if hi <= lo || uint64((hi-lo)/superblock) > MaxSuperblocks {
		return ErrInvalid
	}
	*a = Allocator{}
	a.lo, a.hi, a.cpus = lo, hi, cpus
	a.sbShift = uint(bits.TrailingZeros64(uint64(superblock)))
	a.nsb = uint64((hi - lo) >> a.sbShift)
	return nil
}

func alignUp(x, a uintptr) uintptr { return (x + a - 1) &^ (a - 1) }

func (a *Allocator) sbSize() uintptr { return 1 << a.sbShift }

// ---- shared pool (atomics) -------------------------------------------

// takeSuperblock claims one free superblock, starting the search at a
// CPU-specific point so CPUs rarely CAS the same word.
func (a *Allocator) takeSuperblock(cpu int) (uintptr, bool) {
	words := (a.nsb + 63) / 64
	start := uint64(cpu) * words / uint64(a.cpus)
	for i := uint64(0); i < words; i++ {
		w := (start + i) % words
		pw := &a.pool[w]
		for {
			old := pw.Load()
			free := ^old
			if rem := a.nsb - w*64; rem < 64 {
				free &= 1<<rem - 1
			}
			if free == 0 {
				break
			}
			b := uint64(bits.TrailingZeros64(free))
			if pw.CompareAndSwap(old, old|1<<b) {
				return a.lo + uintptr(w*64+b)<<a.sbShift, true
			}
		}
	}
	return 0, false
}

func (a *Allocator) claimBit(i uint64) bool {
	pw := &a.pool[i/64]
	m := uint64(1) << (i % 64)
	for {
		old := pw.Load()
		if old&m != 0 {
			return false
		}
		if pw.CompareAndSwap(old, old|m) {
			return true
		}
	}
}

func (a *Allocator) releaseBit(i uint64) { a.pool[i/64].And(^(uint64(1) << (i % 64))) }

func (a *Allocator) bitUsed(i uint64) bool { return a.pool[i/64].Load()&(1<<(i%64)) != 0 }

// takeRun claims k contiguous superblocks whose first is a multiple of
// step (in superblocks), claiming bit by bit and rolling back on conflict.
func (a *Allocator) takeRun(k, step uint64) (uintptr, bool) {
	for i := uint64(0); i+k <= a.nsb; i += step {
		free := true
		for j := i; j < i+k && free; j++ {
			free = !a.bitUsed(j)
		}
		if !free {
			continue
		}
		got := uint64(0)
		for got < k && a.claimBit(i+got) {
			got++
		}
		if got == k {
			return a.lo + uintptr(i)<<a.sbShift, true
		}
		for j := uint64(0); j < got; j++ {
			a.releaseBit(i + j)
		}
	}
	return 0, false
}

// ---- Alloc -------------------------------------------------------------

// Alloc returns a range of size bytes aligned to align (both multiples of
// PageSize; align a power of two, 0 meaning PageSize).
func (a *Allocator) Alloc(cpu int, size, align uintptr) (uintptr, error) {
	if align == 0 {
		align = PageSize
	}
	if cpu < 0 || cpu >= a.cpus || size == 0 || size%PageSize != 0 ||
		align%PageSize != 0 || align&(align-1) != 0 {
		return 0, ErrInvalid
	}
	p := &a.pcpu[cpu]
	if size > a.sbSize() || align > a.sbSize() {
		return a.allocLarge(p, size, align)
	}
	if addr, ok := p.fromList(size, align); ok {
		p.allocated.Add(int64(size))
		return addr, nil
	}
	for try := 0; try < 2; try++ {
		st := alignUp(p.cur, align)
		if p.hasSB && st >= p.cur && st+size <= p.end && st+size > st {
			if st > p.cur {
				a.insert(p, p.cur, st)
			}
			p.cur = st + size
			if p.cur == p.end {
				// Give up a used-up superblock at once: its ranges may
				// all be freed on other CPUs, which then return it to
				// the pool; it must not still be "current" here.
				p.hasSB = false
			}
			p.allocated.Add(int64(size))
			return st, nil
		}
		if try == 1 {
			break
		}
		sb, ok := a.takeSuperblock(cpu)
		if !ok {
			return 0, ErrNoSpace
		}
		oldCur, oldEnd, had := p.cur, p.end, p.hasSB
		p.base, p.cur, p.end, p.hasSB = sb, sb, sb+a.sbSize(), true
		if had && oldCur < oldEnd {
			// Retire the old tail (switching first, so that if it
			// completes a whole free superblock, that one goes back).
			a.insert(p, oldCur, oldEnd)
		}
	}
	return 0, ErrNoSpace // unreachable: a fresh superblock fits any small request
}

// allocLarge takes whole superblocks from the pool. A request of at most
// one superblock (but aligned more strictly) keeps the superblock's tail
// in the CPU's free list.
func (a *Allocator) allocLarge(p *perCPU, size, align uintptr) (uintptr, error) {
	sb := a.sbSize()
	k := uint64(alignUp(size, sb) >> a.sbShift)
	step := uint64(1)
	if align > sb {
		step = uint64(align >> a.sbShift)
	}
	// Alignment is relative to address 0, and lo is superblock aligned:
	// find the first index whose address is aligned.
	addr, ok := a.takeRunAligned(k, step, align)
	if !ok {
		return 0, ErrNoSpace
	}
	if size < sb {
		a.insert(p, addr+size, addr+sb)
		p.allocated.Add(int64(size))
	} else {
		p.allocated.Add(int64(k) << a.sbShift)
	}
	return addr, nil
}

func (a *Allocator) takeRunAligned(k, step uint64, align uintptr) (uintptr, bool) {
	if step == 1 {
		return a.takeRun(k, 1)
	}
	// Offset of the first aligned superblock index within the window.
	first := uint64((alignUp(a.lo, align) - a.lo) >> a.sbShift)
	for i := first; i+k <= a.nsb; i += step {
		if addr, ok := a.takeRunAt(i, k); ok {
			return addr, true
		}
	}
	return 0, false
}

func (a *Allocator) takeRunAt(i, k uint64) (uintptr, bool) {
	got := uint64(0)
	for got < k && a.claimBit(i+got) {
		got++
	}
	if got == k {
		return a.lo + uintptr(i)<<a.sbShift, true
	}
	for j := uint64(0); j < got; j++ {
		a.releaseBit(i + j)
	}
	return 0, false
}

// fromList carves the first fitting span of the free list.
func (p *perCPU) fromList(size, align uintptr) (uintptr, bool) {
	for i := 0; i < p.n; i++ {
		s := p.free[i]
		st := alignUp(s.start, align)
		if st < s.start || st+size > s.end || st+size < st {
			continue
		}
		left, right := st > s.start, st+size < s.end
		switch {
		case left && right:
			if p.n == FreeSlots {
				continue
			}
			copy(p.free[i+2:p.n+1], p.free[i+1:p.n])
			p.n++
			p.free[i] = span{s.start, st}
			p.free[i+1] = span{st + size, s.end}
		case left:
			p.free[i].end = st
		case right:
			p.free[i].start = st + size
		default:
			copy(p.free[i:], p.free[i+1:p.n])
			p.n--
		}
		p.listed.Add(-int64(size))
		return st, true
	}
	return 0, false
}

// ---- Free ----------------------------------------------------------------

// Free returns [addr, addr+size) on the current CPU. Sizes above one
// superblock go back to the pool (rounded up to whole superblocks, as
// Alloc took them); smaller ranges go to this CPU's free list, where a
// span that grows to cover a whole superblock returns it to the pool.
func (a *Allocator) Free(cpu int, addr, size uintptr) error {
	if cpu < 0 || cpu >= a.cpus || size == 0 || size%PageSize != 0 || addr%PageSize != 0 ||
		addr < a.lo || addr >= a.hi || a.hi-addr < size {
		return ErrInvalid
	}
	p := &a.pcpu[cpu]
	sb := a.sbSize()
	if size > sb {
		if (addr-a.lo)&(sb-1) != 0 || a.hi-addr < alignUp(size, sb) {
			return ErrInvalid
		}
		i := uint64((addr - a.lo) >> a.sbShift)
		k := uint64(alignUp(size, sb) >> a.sbShift)
		for j := uint64(0); j < k; j++ {
			a.releaseBit(i + j)
		}
		p.allocated.Add(-int64(k) << a.sbShift)
		return nil
	}
	if p.overlapsFree(addr, addr+size) {
		return ErrOverlap
	}
	p.allocated.Add(-int64(size))
	a.insert(p, addr, addr+size)
	return nil
}

func (p *perCPU) overlapsFree(start, end uintptr) bool {
	i := p.search(start)
	return i < p.n && p.free[i].start < end
}

// search returns the first span whose end > addr.
func (p *perCPU) search(addr uintptr) int {
	lo, hi := 0, p.n
	for lo < hi {
		m := (lo + hi) / 2
		if p.free[m].end <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// insert adds free [start, end) to p's list, merging neighbours, folding
// it back into the bump region if it touches it, and returning whole
// superblocks to the pool.
func (a *Allocator) insert(p *perCPU, start, end uintptr) {
	i := p.search(start)
	if i > 0 && p.free[i-1].end == start {
		i--
	}
	j := i
	for j < p.n && p.free[j].start <= end {
		start = min(start, p.free[j].start)
		end = max(end, p.free[j].end)
		j++
	}
	// Remove the merged spans [i, j) from the list (and their bytes).
	for k := i; k < j; k++ {
		p.listed.Add(-int64(p.free[k].end - p.free[k].start))
	}
	copy(p.free[i:], p.free[j:p.n])
	p.n -= j - i
	// Fold into the bump region of the current superblock what reaches
	// it from below. A merged span may start in the superblock before
	// (the old tail retired when this one was taken, when the two are
	// adjacent): only the part inside this superblock folds, the rest
	// stays a span ending at its base.
	if p.hasSB && end == p.cur && end > p.base {
		if start >= p.base {
			p.cur = start
			return
		}
		p.cur, end = p.base, p.base
	}
	a.place(p, i, start, end)
}

// place puts the merged span [start, end) at index i, first cutting out
// whole superblocks (other than the current one) for the pool.
func (a *Allocator) place(p *perCPU, i int, start, end uintptr) {
	sb := a.sbSize()
	first := a.lo + alignUp(start-a.lo, sb)
	last := a.lo + (end-a.lo)&^(sb-1)
	// The current superblock is never inside a free span: its bump
	// region [cur, end) is not free, and a free span reaching cur from
	// below was folded in by insert.
	for s := first; s < last; s += sb {
		a.releaseBit(uint64((s - a.lo) >> a.sbShift))
	}
	if first < last {
		a.putSpan(p, i, start, first)
		if first > start {
			i++
		}
		a.putSpan(p, i, last, end)
		return
	}
	a.putSpan(p, i, start, end)
}

func (p *perCPU) smallest() int {
	k := 0
	for i := 1; i < p.n; i++ {
		if p.free[i].end-p.free[i].start < p.free[k].end-p.free[k].start {
			k = i
		}
	}
	return k
}

// putSpan inserts a non-touching span at index i (when the list is full,
// the smallest span is dropped).
func (a *Allocator) putSpan(p *perCPU, i int, start, end uintptr) {
	if start >= end {
		return
	}
	if p.n == FreeSlots {
		// Full: leak the smallest of the spans (the new one included),
		// so that what stays reusable is as large as possible.
		k := p.smallest()
		if s := p.free[k]; s.end-s.start >= end-start {
			p.dropped.Add(int64(end - start))
			return
		}
		p.dropped.Add(int64(p.free[k].end - p.free[k].start))
		p.listed.Add(-int64(p.free[k].end - p.free[k].start))
		copy(p.free[k:], p.free[k+1:p.n])
		p.n--
		if k < i {
			i--
		}
	}
	copy(p.free[i+1:p.n+1], p.free[i:p.n])
	p.n++
	p.free[i] = span{start, end}
	p.listed.Add(int64(end - start))
}

// ---- statistics ------------------------------------------------------------

// Stats is a snapshot of the allocator's counters.
type Stats struct {
	Superblocks     uint64 // in the window
	SuperblocksUsed uint64 // taken from the pool (by CPUs or large ranges)
	AllocatedBytes  int64  // handed out and not freed
	FreeListBytes   int64  // in per-CPU free lists
	DroppedBytes    int64  // leaked because a free list was full
}

// Stats may be called from any CPU at any time.
func (a *Allocator) Stats() Stats {
	s := Stats{Superblocks: a.nsb}
	for w := uint64(0); w < (a.nsb+63)/64; w++ {
		s.SuperblocksUsed += uint64(bits.OnesCount64(a.pool[w].Load()))
	}
	for c := 0; c < a.cpus; c++ {
		p := &a.pcpu[c]
		s.AllocatedBytes += p.allocated.Load()
		s.FreeListBytes += p.listed.Load()
		s.DroppedBytes += p.dropped.Load()
	}
	return s
}

// Window returns the managed window after rounding.
func (a *Allocator) Window() (lo, hi uintptr) { return a.lo, a.hi }
