package mm

import (
	"math/rand"
	"testing"
	"unsafe"
)

// fakeRAM stands in for guest physical memory: physical address p lives at
// &ram[p-base].
type fakeRAM struct {
	ram  []byte
	base uintptr
}

func newRAM(t *testing.T, size uintptr) (*fakeRAM, Phys) {
	// Over-allocate to align the backing store to 2 MiB: physical frames
	// are aligned and the page table stores their addresses.
	b := make([]byte, size+HugeSize)
	start := uintptr(unsafe.Pointer(&b[0]))
	aligned := (start + HugeSize - 1) &^ (HugeSize - 1)
	r := &fakeRAM{ram: b[aligned-start:][:size]}
	// Physical addresses run from 0x100000 upward; Off maps them into ram.
	r.base = 0x200000
	// Tests reach the slice only through Phys.Off (a uintptr): keep it
	// alive for the whole test binary.
	keepRAM = append(keepRAM, r)
	return r, Phys{Off: aligned - r.base}
}

var keepRAM []*fakeRAM

func setup(t *testing.T) (*Frames, *PageTable) {
	_, p := newRAM(t, 64<<20)
	f := &Frames{}
	if err := f.Init(p, 0x200000, 0x200000+64<<20, 2); err != nil {
		t.Fatal(err)
	}
	root, err := f.Alloc4K()
	if err != nil {
		t.Fatal(err)
	}
	return f, &PageTable{Phys: p, Root: root, Frames: f}
}

func TestMapLookup(t *testing.T) {
	f, pt := setup(t)
	pa, _ := f.Alloc4K()
	const va = 0xc000001000
	if err := pt.Map4K(va, pa); err != nil {
		t.Fatal(err)
	}
	if got, size := pt.Lookup(va + 123); got != pa+123 || size != PageSize {
		t.Fatalf("lookup: %#x size %d", got, size)
	}
	if _, size := pt.Lookup(va + PageSize); size != 0 {
		t.Fatal("neighbouring page reported mapped")
	}
	huge, err := f.Alloc2M()
	if err != nil || huge&(HugeSize-1) != 0 {
		t.Fatalf("2M frame %#x %v", huge, err)
	}
	if err := pt.Map2M(0xc000400000, huge); err != nil {
		t.Fatal(err)
	}
	if got, size := pt.Lookup(0xc000400000 + 0x12345); got != huge+0x12345 || size != HugeSize {
		t.Fatalf("huge lookup %#x %d", got, size)
	}
	if err := pt.Map2M(0xc000400000, huge); err == nil {
		t.Fatal("double 2M mapping accepted")
	}
}

// TestPopulate checks the huge/small split and that memory reads as zero
// after Populate and Zero, even where it was written before.
func TestPopulate(t *testing.T) {
	_, pt := setup(t)
	va := uintptr(0xc000000000 + 0x3000)
	n := uintptr(5<<20 - 0x3000)
	if err := pt.Populate(va, n); err != nil {
		t.Fatal(err)
	}
	huge := 0
	for a := va; a < va+n; a += PageSize {
		pa, size := pt.Lookup(a)
		if size == 0 {
			t.Fatalf("%#x not mapped", a)
		}
		if size == HugeSize {
			huge++
		}
		b := (*byte)(pt.ptr(pa))
		if *b != 0 {
			t.Fatalf("%#x not zero", a)
		}
		*b = 0xaa
	}
	if huge == 0 {
		t.Fatal("no 2 MiB page used for an aligned 2 MiB piece")
	}
	// Re-populating must keep contents (other threads may be using them)
	// and write no entry.
	w := pt.Writes
	if err := pt.Populate(va, n); err != nil {
		t.Fatal(err)
	}
	if pt.Writes != w {
		t.Fatalf("re-populating wrote %d entries", pt.Writes-w)
	}
	for a := va; a < va+n; a += PageSize {
		pa, _ := pt.Lookup(a)
		if *(*byte)(pt.ptr(pa)) != 0xaa {
			t.Fatalf("%#x lost its contents", a)
		}
	}
	pt.Zero(va, n)
	for a := va; a < va+n; a += PageSize {
		pa, _ := pt.Lookup(a)
		if *(*byte)(pt.ptr(pa)) != 0 {
			t.Fatalf("%#x not zeroed", a)
		}
	}
}

func TestFramesExhaustion(t *testing.T) {
	_, p := newRAM(t, 8<<20)
	f := &Frames{}
	if err := f.Init(p, 0x200000, 0x200000+8<<20, 1); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := f.Alloc4K(); err != nil {
			if err != ErrNoMemory {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	if uint64(n) != f.Total/PageSize || f.Free() != 0 {
		t.Fatalf("allocated %d frames of %d (free %d)", n, f.Total/PageSize, f.Free())
	}
	if _, err := f.Alloc2M(); err != ErrNoMemory {
		t.Fatal("2M allocation from an exhausted allocator")
	}
}

func TestFramesReuseZeroes(t *testing.T) {
	_, p := newRAM(t, 8<<20)
	f := &Frames{}
	if err := f.Init(p, 0x200000, 0x200000+8<<20, 1); err != nil {
		t.Fatal(err)
	}
	// Dirty every frame, free them all, and take them again: each must be
	// zero (the kernel's own users ask for zeroed frames).
	var all []uintptr
	for {
		a, err := f.Alloc4K()
		if err != nil {
			break
		}
		*(*byte)(f.ptr(a + 100)) = 7
		all = append(all, a)
	}
	for _, a := range all {
		if err := f.Free4K(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Free4K(all[0]); err == nil {
		t.Fatal("double free accepted")
	}
	for range all {
		b, err := f.Alloc4K()
		if err != nil {
			t.Fatal(err)
		}
		if *(*byte)(f.ptr(b + 100)) != 0 {
			t.Fatalf("reused frame %#x not zero", b)
		}
	}
}

// TestVMAsModel compares VMAs with a page-granular model under random
// inserts and removes.
func TestVMAsModel(t *testing.T) {
	var v VMAs
	model := map[uintptr]bool{}
	rng := rand.New(rand.NewSource(1))
	const pages = 512
	for i := 0; i < 5000; i++ {
		s := uintptr(rng.Intn(pages))
		e := s + 1 + uintptr(rng.Intn(16))
		if rng.Intn(2) == 0 {
			v.Insert(s*PageSize, e*PageSize)
			for p := s; p < e; p++ {
				model[p] = true
			}
		} else {
			v.Remove(s*PageSize, e*PageSize)
			for p := s; p < e; p++ {
				delete(model, p)
			}
		}
		for k := 0; k+1 < v.Len(); k++ {
			if v.At(k).End >= v.At(k+1).Start || v.At(k).Start >= v.At(k).End {
				t.Fatalf("invariant broken at %d: %+v %+v", k, v.At(k), v.At(k+1))
			}
		}
	}
	for p := uintptr(0); p < pages+20; p++ {
		if got := !v.Free(p*PageSize, (p+1)*PageSize); got != model[p] {
			t.Fatalf("page %d: set says %v, model %v", p, got, model[p])
		}
	}
	gap := v.FindGap(3*PageSize, PageSize, 0, (pages+20)*PageSize)
	if gap == 0 || !v.Free(gap, gap+3*PageSize) {
		t.Fatalf("FindGap returned %#x, not free", gap)
	}
}

// TestUnmap: whole pages inside the range leave the page table and are
// reported (2 MiB pages as one), pages only partly inside are zeroed in
// place and stay mapped, and a small output buffer resumes where it
// stopped.
func TestUnmap(t *testing.T) {
	_, pt := setup(t)
	base := uintptr(0xc000000000)
	if err := pt.Populate(base, 6<<20); err != nil { // 3 huge pages
		t.Fatal(err)
	}
	if err := pt.Populate(base+6<<20, 64<<10); err != nil { // 16 small pages
		t.Fatal(err)
	}
	for a := base; a < base+6<<20+64<<10; a += PageSize {
		pa, _ := pt.Lookup(a)
		*(*byte)(pt.ptr(pa)) = 7
		*(*byte)(pt.ptr(pa + 100)) = 7
	}
	// From 1 MiB into the first huge page to 8 KiB + 50 bytes into the
	// small pages: huge pages 2 and 3 and small pages 1-2 go whole; huge
	// page 1 and small page 3 are partial.
	start, end := base+1<<20, base+6<<20+8<<10+50
	out := make([]Reclaimed, 3)
	var got []Reclaimed
	for va := start; va < end; {
		k, next := pt.Unmap(va, end-va, out)
		got = append(got, out[:k]...)
		if next == va {
			t.Fatal("no progress")
		}
		va = next
	}
	huge, small := 0, 0
	for _, r := range got {
		switch r.Size {
		case HugeSize:
			huge++
		case PageSize:
			small++
		}
	}
	if huge != 2 || small != 2 {
		t.Fatalf("reclaimed %d huge and %d small pages, want 2 and 2: %v", huge, small, got)
	}
	if _, size := pt.Lookup(base + 3<<20); size != 0 {
		t.Error("whole huge page still mapped")
	}
	if _, size := pt.Lookup(base + 6<<20 + 4<<10); size != 0 {
		t.Error("whole small page still mapped")
	}
	// Partial pages: mapped, zero inside the range, intact outside it.
	pa, size := pt.Lookup(base + 1<<20)
	if size != HugeSize || *(*byte)(pt.ptr(pa)) != 0 {
		t.Error("partial huge page not zeroed in range")
	}
	if pa, _ := pt.Lookup(base); *(*byte)(pt.ptr(pa)) != 7 {
		t.Error("partial huge page lost data outside the range")
	}
	pa, size = pt.Lookup(base + 6<<20 + 8<<10)
	if size != PageSize || *(*byte)(pt.ptr(pa)) != 0 || *(*byte)(pt.ptr(pa + 100)) != 7 {
		t.Error("partial small page: want zero up to the end of the range, data after it")
	}
}
