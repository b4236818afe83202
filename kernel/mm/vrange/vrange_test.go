package vrange

// Goroutines stand in for CPUs, each with its own cpu index as the kernel
// guarantees. Tests check behaviour and invariants, never timings.

import (
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
)

const (
	lo0 = 0x100000000000
	gib = 1 << 30
	mib = 1 << 20
)

func newAlloc(t testing.TB, lo, hi uintptr, cpus int, sb uintptr) *Allocator {
	t.Helper()
	a := new(Allocator)
	if err := a.Init(lo, hi, cpus, sb); err != nil {
		t.Fatal(err)
	}
	check(t, a)
	return a
}

func check(t testing.TB, a *Allocator) {
	t.Helper()
	if err := a.Check(); err != nil {
		t.Fatal(err)
	}
}

type rng struct{ addr, size uintptr }

func disjoint(t *testing.T, rs []rng) {
	t.Helper()
	sort.Slice(rs, func(i, j int) bool { return rs[i].addr < rs[j].addr })
	for i := 1; i < len(rs); i++ {
		if rs[i-1].addr+rs[i-1].size > rs[i].addr {
			t.Fatalf("ranges [%#x,+%#x) and [%#x,+%#x) overlap", rs[i-1].addr, rs[i-1].size, rs[i].addr, rs[i].size)
		}
	}
}

func TestInitErrors(t *testing.T) {
	var a Allocator
	for _, c := range []struct {
		lo, hi uintptr
		cpus   int
		sb     uintptr
	}{
		{lo0, lo0 + gib/2, 1, 0}, // window smaller than a superblock
		{lo0, lo0 + 4*gib, 0, 0},
		{lo0, lo0 + 4*gib, MaxCPUs + 1, 0},
		{lo0, lo0 + 4*gib, 1, 3 * mib},
		{lo0, lo0 + (MaxSuperblocks+1)*2*mib, 1, 2 * mib},
	} {
		if err := a.Init(c.lo, c.hi, c.cpus, c.sb); !errors.Is(err, ErrInvalid) {
			t.Errorf("Init(%#x, %#x, %d, %#x) = %v", c.lo, c.hi, c.cpus, c.sb, err)
		}
	}
}

func TestBasic(t *testing.T) {
	a := newAlloc(t, lo0+123, lo0+64*gib+5, 2, 0)
	if lo, hi := a.Window(); lo != lo0+gib || hi != lo0+64*gib {
		t.Fatalf("window [%#x,%#x)", lo, hi)
	}
	var rs []rng
	for i, c := range []struct{ size, align uintptr }{
		{PageSize, 0}, {3 * PageSize, PageSize}, {2 * mib, 2 * mib}, {PageSize, 64 * 1024},
		{gib, 0}, {3 * gib, gib}, {PageSize, 4 * gib}, {5 * mib, 0},
	} {
		addr, err := a.Alloc(i%2, c.size, c.align)
		if err != nil {
			t.Fatalf("Alloc(%#x, %#x): %v", c.size, c.align, err)
		}
		if c.align != 0 && addr%c.align != 0 {
			t.Fatalf("Alloc(%#x, %#x) = %#x misaligned", c.size, c.align, addr)
		}
		rs = append(rs, rng{addr, c.size})
		check(t, a)
	}
	disjoint(t, append([]rng(nil), rs...))
	for i, r := range rs {
		if err := a.Free(i%2, r.addr, r.size); err != nil {
			t.Fatal(err)
		}
		check(t, a)
	}
	st := a.Stats()
	if st.AllocatedBytes != 0 || st.DroppedBytes != 0 {
		t.Fatalf("stats after freeing all: %+v", st)
	}
	// Each CPU keeps at most its current superblock.
	if st.SuperblocksUsed > 2 {
		t.Fatalf("%d superblocks still used after freeing all on the allocating CPUs", st.SuperblocksUsed)
	}
}

func TestInvalid(t *testing.T) {
	a := newAlloc(t, lo0, lo0+4*gib, 1, 0)
	for _, c := range []struct {
		cpu         int
		size, align uintptr
	}{
		{1, PageSize, 0}, {-1, PageSize, 0}, {0, 0, 0}, {0, 100, 0}, {0, PageSize, 3 * PageSize}, {0, PageSize, 100},
	} {
		if _, err := a.Alloc(c.cpu, c.size, c.align); !errors.Is(err, ErrInvalid) {
			t.Errorf("Alloc(%d, %#x, %#x) = %v", c.cpu, c.size, c.align, err)
		}
	}
	addr, _ := a.Alloc(0, 2*PageSize, 0)
	if err := a.Free(0, addr+1, PageSize); !errors.Is(err, ErrInvalid) {
		t.Errorf("unaligned free: %v", err)
	}
	if err := a.Free(0, lo0-PageSize, PageSize); !errors.Is(err, ErrInvalid) {
		t.Errorf("free below window: %v", err)
	}
	if err := a.Free(0, addr, PageSize); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(0, addr+PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	// Now both pages are free (folded back into the bump region); a
	// free of a listed range is caught.
	x, _ := a.Alloc(0, PageSize, 0)
	y, _ := a.Alloc(0, PageSize, 0)
	_, _ = a.Alloc(0, PageSize, 0)
	if err := a.Free(0, x, PageSize); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(0, x, PageSize); !errors.Is(err, ErrOverlap) {
		t.Errorf("double free: %v", err)
	}
	_ = y
	check(t, a)
}

// TestExhaustion fills a small window with superblocks of 2 MiB.
func TestExhaustion(t *testing.T) {
	const sb = 2 * mib
	a := newAlloc(t, lo0, lo0+8*sb, 2, sb)
	var rs []rng
	var total uintptr
	for i := 0; ; i++ {
		size := uintptr(1+i%7) * PageSize
		addr, err := a.Alloc(i%2, size, 0)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, rng{addr, size})
		total += size
	}
	check(t, a)
	disjoint(t, append([]rng(nil), rs...))
	// Each CPU may strand at most one superblock tail smaller than the
	// largest request when it moves on.
	if total < 8*sb-2*7*PageSize*2 {
		t.Fatalf("only %d of %d bytes handed out before ErrNoSpace", total, 8*sb)
	}
	if _, err := a.Alloc(0, 3*sb, 0); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("large alloc in a full window: %v", err)
	}
	for i, r := range rs {
		if err := a.Free(i%2, r.addr, r.size); err != nil {
			t.Fatal(err)
		}
	}
	check(t, a)
	if st := a.Stats(); st.AllocatedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	// After freeing on the allocating CPUs, whole superblocks are back:
	// a run of 4 fits again (each CPU holds at most its current one).
	addr, err := a.Alloc(1, 4*sb, 0)
	if err != nil {
		t.Fatalf("large alloc after freeing: %v", err)
	}
	if err := a.Free(0, addr, 4*sb); err != nil {
		t.Fatal(err)
	}
	check(t, a)
}

// TestDropWhenListFull: frees that need more slots than a CPU has are
// dropped and counted, never corrupting the accounting.
func TestDropWhenListFull(t *testing.T) {
	a := newAlloc(t, lo0, lo0+4*gib, 2, 0)
	var rs []rng
	for i := 0; i < 2*FreeSlots+10; i++ {
		addr, err := a.Alloc(0, PageSize, 0)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, rng{addr, PageSize})
	}
	// Free every other page on CPU 1: each is a separate span.
	for i := 0; i < len(rs); i += 2 {
		if err := a.Free(1, rs[i].addr, PageSize); err != nil {
			t.Fatal(err)
		}
	}
	check(t, a)
	st := a.Stats()
	if want := int64(len(rs)/2-FreeSlots) * PageSize; st.DroppedBytes != want {
		t.Fatalf("dropped %d, want %d", st.DroppedBytes, want)
	}
}

// TestFoldAcrossSuperblocks: a span freed at the bottom of the current
// superblock merges with the retired tail of the adjacent superblock
// before it; the part inside the current superblock must fold back into
// the bump region, or once the old superblock goes back to the pool a
// span is left touching the bump region (TestStress caught it in about
// one run in 25).
func TestFoldAcrossSuperblocks(t *testing.T) {
	a := newAlloc(t, lo0, lo0+16*2*mib, 1, 2*mib)
	s0, err := a.Alloc(0, 0x28000, 2*mib)
	if err != nil || s0 != lo0 {
		t.Fatalf("first alloc %#x, %v", s0, err)
	}
	s1, err := a.Alloc(0, 0x27000, 2*mib) // does not fit: takes the next superblock
	if err != nil || s1 != lo0+2*mib {
		t.Fatalf("second alloc %#x, %v", s1, err)
	}
	check(t, a)
	if err := a.Free(0, s1, 0x27000); err != nil {
		t.Fatal(err)
	}
	check(t, a)
	if err := a.Free(0, s0, 0x28000); err != nil { // the old superblock is whole again
		t.Fatal(err)
	}
	check(t, a)
	if st := a.Stats(); st.SuperblocksUsed != 1 || st.FreeListBytes != 0 || st.AllocatedBytes != 0 {
		t.Fatalf("after freeing both: %+v", st)
	}
	if p, err := a.Alloc(0, 2*mib, 0); err != nil || p != s1 {
		t.Fatalf("the current superblock is not whole again: alloc %#x, %v", p, err)
	}
}

func TestStress(t *testing.T) {
	for _, sb := range []uintptr{2 * mib, gib} {
		rounds := 20000
		if testing.Short() {
			rounds = 2000
		}
		stress(t, 4, sb, rounds)
	}
}

func stress(t *testing.T, cpus int, sb uintptr, rounds int) {
	a := newAlloc(t, lo0, lo0+256*sb, cpus, sb)
	held := make([][]rng, cpus)
	var wg sync.WaitGroup
	phase := func(body func(c int, r *rand.Rand)) {
		for c := 0; c < cpus; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				body(c, rand.New(rand.NewPCG(uint64(c), uint64(sb))))
			}(c)
		}
		wg.Wait()
	}
	phase(func(c int, r *rand.Rand) {
		for i := 0; i < rounds; i++ {
			if len(held[c]) > 0 && r.IntN(2) == 0 {
				k := r.IntN(len(held[c]))
				x := held[c][k]
				held[c][k] = held[c][len(held[c])-1]
				held[c] = held[c][:len(held[c])-1]
				if err := a.Free(c, x.addr, x.size); err != nil {
					t.Error(err)
					return
				}
				continue
			}
			size := uintptr(1+r.IntN(64)) * PageSize
			align := uintptr(PageSize) << r.IntN(10)
			if r.IntN(200) == 0 {
				size = uintptr(1+r.IntN(3)) * sb // large
			}
			addr, err := a.Alloc(c, size, align)
			if errors.Is(err, ErrNoSpace) {
				continue
			}
			if err != nil {
				t.Error(err)
				return
			}
			if addr%align != 0 {
				t.Errorf("misaligned %#x for %#x", addr, align)
			}
			held[c] = append(held[c], rng{addr, size})
		}
	})
	if t.Failed() {
		return
	}
	check(t, a)
	var all []rng
	for _, h := range held {
		all = append(all, h...)
	}
	disjoint(t, all)
	// Each CPU frees the next CPU's ranges (no cross-CPU coalescing, so
	// superblocks stay with the freeing CPU; accounting must still hold).
	phase(func(c int, r *rand.Rand) {
		for _, x := range held[(c+1)%cpus] {
			if err := a.Free(c, x.addr, x.size); err != nil {
				t.Error(err)
				return
			}
		}
	})
	check(t, a)
	st := a.Stats()
	if st.AllocatedBytes != 0 {
		t.Fatalf("allocated %d after freeing all", st.AllocatedBytes)
	}
	t.Logf("sb %#x: %+v", sb, st)
}

func BenchmarkAllocFree(b *testing.B) {
	a := newAlloc(b, lo0, lo0+64*gib, 1, 0)
	for b.Loop() {
		x, _ := a.Alloc(0, PageSize, 0)
		_ = a.Free(0, x, PageSize)
	}
}
