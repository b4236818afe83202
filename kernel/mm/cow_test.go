package mm

import (
	"bytes"
	"math/rand"
	"testing"
	"unsafe"
)

// cowEnv is a page table over fake RAM with a software "MMU": reads go
// through Lookup, writes through Writable/BreakWrite as a protection fault
// would.
type cowEnv struct {
	t  *testing.T
	f  *Frames
	pt *PageTable
	c  *CoW
}

func newCoWEnv(t *testing.T, ram uintptr) *cowEnv {
	_, p := newRAM(t, ram)
	f := &Frames{}
	if err := f.Init(p, 0x200000, 0x200000+ram, 2); err != nil {
		t.Fatal(err)
	}
	root, err := f.Alloc4K()
	if err != nil {
		t.Fatal(err)
	}
	pt := &PageTable{Phys: p, Root: root, Frames: f}
	c := &CoW{}
	c.Init(pt, nil)
	return &cowEnv{t, f, pt, c}
}

func (e *cowEnv) word(va uintptr) *uint64 {
	pa, size := e.pt.Lookup(va)
	if size == 0 {
		e.t.Fatalf("access to unmapped %#x", va)
	}
	return (*uint64)(e.pt.ptr(pa))
}

func (e *cowEnv) read(va uintptr) uint64 { return *e.word(va) }

func (e *cowEnv) write(va uintptr, v uint64) {
	if !e.c.Writable(va) {
		ok, err := e.c.BreakWrite(va)
		if !ok || err != nil {
			e.t.Fatalf("break write at %#x: %v %v", va, ok, err)
		}
		if !e.c.Writable(va) {
			e.t.Fatalf("%#x still write-protected after BreakWrite", va)
		}
	}
	*e.word(va) = v
}

// check verifies the reference counts against the page table: every frame
// reachable from the root is counted once per referencing entry, a frame
// reachable through W=1 entries only is referenced once, and the frames
// in use are exactly the reachable ones plus the count blocks and the
// frames waiting for a flush.
func (e *cowEnv) check() {
	refs := map[uintptr]int{}
	sizes := map[uintptr]uintptr{}
	var walk func(pa uintptr, level uint, writable bool)
	walk = func(pa uintptr, level uint, writable bool) {
		t := e.pt.table(pa)
		for _, x := range t {
			if x&PTEPresent == 0 {
				continue
			}
			c := uintptr(x & PTEAddr)
			w := writable && x&PTEWrite != 0
			refs[c]++
			first := refs[c] == 1
			if w && e.c.Refs.Extra(c) != 0 {
				e.t.Fatalf("frame %#x reachable with W but shared (extra %d)", c, e.c.Refs.Extra(c))
			}
			switch {
			case level == 0:
				sizes[c] = PageSize
			case x&PTEHuge != 0:
				sizes[c] = HugeSize
			default:
				sizes[c] = PageSize
				if first {
					walk(c, level-1, w)
				}
			}
		}
	}
	walk(e.pt.Root, 3, true)
	used := uintptr(PageSize) // root
	for pa, n := range refs {
		if got := e.c.Refs.Extra(pa); int(got) != n-1 {
			e.t.Fatalf("frame %#x: %d references, extra count %d", pa, n, got)
		}
		used += sizes[pa]
	}
	for _, b := range e.c.Refs.blocks {
		if b != 0 {
			used += PageSize << refBlockOrd
		}
	}
	for _, p := range e.c.pending[:e.c.npending] {
		used += PageSize << p.order
	}
	if uint64(used) != e.f.Used() {
		e.t.Fatalf("frames in use %d, reachable+counts+pending %d", e.f.Used(), used)
	}
}

// space is a model of one address range's contents: words written since
// the range was filled (or snapshotted), the rest from its parent model.
type space struct {
	base  uintptr
	words map[uintptr]uint64 // offset → value
}

func TestCoWModel(t *testing.T) {
	e := newCoWEnv(t, 160<<20)
	const src = 0xc000000000 - 6<<20 // crosses a 1 GiB boundary
	const n = 12 << 20
	// Mixed mappings: 2 MiB pages, and 4 KiB pages in the first 2 MiB.
	if err := e.pt.Populate(src+PageSize, n-PageSize); err != nil {
		t.Fatal(err)
	}
	pa, _ := e.f.Alloc4K()
	if err := e.pt.Map4K(src, pa); err != nil {
		t.Fatal(err)
	}
	orig := &space{src, map[uintptr]uint64{}}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		off := uintptr(rng.Intn(n/8)) * 8
		v := rng.Uint64()
		e.write(src+off, v)
		orig.words[off] = v
	}
	e.check()
	var views []*space
	next := uintptr(0xd000000000 - 6<<20)
	verify := func(s *space) {
		for off, v := range s.words {
			if got := e.read(s.base + off); got != v {
				t.Fatalf("space %#x offset %#x: %#x, want %#x", s.base, off, got, v)
			}
		}
	}
	for step := 0; step < 3000; step++ {
		switch r := rng.Intn(100); {
		case r < 4 && len(views) < 4:
			dst := next
			next += 4<<30 + uintptr(rng.Intn(3))*HugeSize // congruent modulo 1 GiB or not
			if err := e.c.Share(src, dst, n); err != nil {
				t.Fatal(err)
			}
			e.c.FlushAndFree()
			w := make(map[uintptr]uint64, len(orig.words))
			for k, v := range orig.words {
				w[k] = v
			}
			views = append(views, &space{dst, w})
		case r < 7 && len(views) > 0:
			k := rng.Intn(len(views))
			verify(views[k])
			if err := e.c.Drop(views[k].base, n); err != nil {
				t.Fatal(err)
			}
			e.c.FlushAndFree()
			views = append(views[:k], views[k+1:]...)
			if rng.Intn(2) == 0 {
				// Safe with views still alive: only unshared parts get W.
				if err := e.c.Restore(src, n); err != nil {
					t.Fatal(err)
				}
				for off := uintptr(0); off < n && len(views) == 0; off += PageSize {
					if !e.c.Writable(src + off) {
						t.Fatalf("%#x not writable after Restore with no snapshot left", src+off)
					}
				}
				e.check()
			}
		default:
			s := orig
			if len(views) > 0 && rng.Intn(3) == 0 {
				s = views[rng.Intn(len(views))]
			}
			for j := 0; j < 20; j++ {
				off := uintptr(rng.Intn(n/8)) * 8
				v := rng.Uint64()
				e.write(s.base+off, v)
				s.words[off] = v
			}
		}
		if step%50 == 0 {
			verify(orig)
			for _, v := range views {
				verify(v)
			}
			e.check()
		}
	}
	for _, v := range views {
		verify(v)
		if err := e.c.Drop(v.base, n); err != nil {
			t.Fatal(err)
		}
	}
	e.c.FlushAndFree()
	verify(orig)
	e.check()
	t.Logf("%+v", e.c.Stats)
}

// TestCoWWholeGiB shares a whole 1 GiB slot (one upper-level entry per
// side) and checks that writes copy the page directory once and each
// written 2 MiB page once.
func TestCoWWholeGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB of fake RAM")
	}
	e := newCoWEnv(t, 1<<30+96<<20)
	const src, dst = 0x8000000000, 0x9000000000
	if err := e.pt.Populate(src, 1<<30); err != nil {
		t.Fatal(err)
	}
	e.write(src+5, 1)
	before := e.c.Stats.LiveWrites
	if err := e.c.Share(src, dst, 1<<30); err != nil {
		t.Fatal(err)
	}
	if w := e.c.Stats.LiveWrites - before; w != 2 {
		t.Fatalf("sharing 1 GiB wrote %d entries, want 2", w)
	}
	e.write(src+HugeSize*7, 2)
	e.write(src+HugeSize*7+8, 3)
	e.write(dst+HugeSize*9, 4)
	if e.c.Stats.TableCopies != 2 || e.c.Stats.PageCopies != 2 {
		t.Fatalf("stats %+v", e.c.Stats)
	}
	if e.read(dst+HugeSize*7) != 0 || e.read(src+HugeSize*9) != 0 || e.read(dst+5) != 1 {
		t.Fatal("write leaked across the snapshot")
	}
	e.check()
	if err := e.c.Drop(dst, 1<<30); err != nil {
		t.Fatal(err)
	}
	e.c.FlushAndFree()
	before = e.c.Stats.LiveWrites
	if err := e.c.Restore(src, 1<<30); err != nil {
		t.Fatal(err)
	}
	// 511 of the page directory's entries get W back: rebuilt in a fresh
	// table and swapped in by one write, not 511 live writes.
	if w := e.c.Stats.LiveWrites - before; w != 1 || e.c.Stats.TableRebuilds != 1 {
		t.Fatalf("restoring 1 GiB wrote %d live entries, rebuilt %d tables", w, e.c.Stats.TableRebuilds)
	}
	if !e.c.Writable(src) || !e.c.Writable(src+HugeSize*300) {
		t.Fatal("not writable after Restore")
	}
	if e.read(src+5) != 1 || e.read(src+HugeSize*7+8) != 3 {
		t.Fatal("contents changed by Restore")
	}
	e.check()
	e.c.FlushAndFree()
	e.check()
}

func TestCoWErrors(t *testing.T) {
	e := newCoWEnv(t, 32<<20)
	const src = 0xc000000000
	if err := e.pt.Populate(src, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Share(src+PageSize, 0xd000000000, 2<<20); err != ErrCoWAlign {
		t.Fatalf("unaligned: %v", err)
	}
	if err := e.c.Share(src, 0xd000000000, 6<<20); err != ErrCoWNotMapped {
		t.Fatalf("partly mapped: %v", err)
	}
	if ok, _ := e.c.BreakWrite(0xe000000000); ok {
		t.Fatal("break on unmapped memory reported success")
	}
	e.check()
}

// TestCoWBreakSplit: a break whose copy is made without the lock
// (BeginBreak, CopyBreak, FinishBreak) with something else happening to
// the page in between; contents and reference counts stay right.
func TestCoWBreakSplit(t *testing.T) {
	e := newCoWEnv(t, 96<<20)
	const src, n = 0xc000000000, 12 << 20
	if err := e.pt.Populate(src, n); err != nil {
		t.Fatal(err)
	}
	for off := uintptr(0); off < n; off += HugeSize {
		e.write(src+off, uint64(off)+1)
	}
	dst := uintptr(0xd000000000)
	share := func() {
		t.Helper()
		if err := e.c.Share(src, dst, n); err != nil {
			t.Fatal(err)
		}
		e.c.FlushAndFree()
	}
	drop := func() {
		t.Helper()
		if err := e.c.Drop(dst, n); err != nil {
			t.Fatal(err)
		}
		e.c.FlushAndFree()
	}
	split := func(va uintptr, between func()) {
		t.Helper()
		var b Break
		mapped, cp, err := e.c.BeginBreak(va, &b)
		if !mapped || err != nil {
			t.Fatalf("begin at %#x: %v %v", va, mapped, err)
		}
		if cp {
			if err := e.c.CopyBreak(&b); err != nil {
				t.Fatal(err)
			}
		}
		between()
		if cp {
			if ok, err := e.c.FinishBreak(&b); !ok || err != nil {
				t.Fatalf("finish at %#x: %v %v", va, ok, err)
			}
		}
		if !e.c.Writable(va) {
			t.Fatalf("%#x not writable after the break", va)
		}
		e.check()
	}
	share()
	// Nothing in between: the copy is installed.
	split(src, func() {})
	// Another CPU breaks the same page first: the copy goes back.
	split(src+HugeSize, func() { e.write(src+HugeSize+8, 7) })
	// The view goes: the page is exclusive again, writable in place.
	split(src+2*HugeSize, func() { drop() })
	share()
	// A second snapshot is taken meanwhile: still the right contents.
	const dst2 = 0xe000000000
	split(src+3*HugeSize, func() {
		if err := e.c.Share(src, dst2, n); err != nil {
			t.Fatal(err)
		}
	})
	// Frames freed in between (the second view released): copied again
	// under the lock.
	split(src+4*HugeSize, func() {
		if err := e.c.Drop(dst2, n); err != nil {
			t.Fatal(err)
		}
		e.c.FlushAndFree()
	})
	for off := uintptr(0); off < n; off += HugeSize {
		want := uint64(off) + 1
		if got := e.read(dst + off); got != want {
			t.Fatalf("view at %#x: %d, want %d", off, got, want)
		}
		if got := e.read(src + off); got != want {
			t.Fatalf("source at %#x: %d, want %d", off, got, want)
		}
		e.write(src+off, 0)
		if e.read(dst+off) != want {
			t.Fatalf("a write at %#x reached the view", off)
		}
	}
	if e.read(src+HugeSize+8) != 7 {
		t.Fatal("the other CPU's write was lost")
	}
	drop()
	e.check()
	t.Logf("%+v", e.c.Stats)
}

// TestCopyData checks the non-temporal copy against copy() for the sizes
// breaks use (and a size that takes the fallback).
func TestCopyData(t *testing.T) {
	for _, n := range []int{4096, 64 << 10, 2 << 20} {
		buf := make([]byte, 2*n+64)
		off := (32 - int(uintptr(unsafe.Pointer(&buf[0]))%32)) % 32
		dst, src := buf[off:off+n], buf[off+n:off+2*n]
		for i := range src {
			src[i] = byte(i*7 + i>>11)
		}
		copyData(unsafe.Pointer(&dst[0]), unsafe.Pointer(&src[0]), uintptr(n))
		if !bytes.Equal(dst, src) {
			t.Fatalf("copyData of %d bytes: copy differs", n)
		}
	}
}
