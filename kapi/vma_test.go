package kapi

import (
	"errors"
	"math/rand"
	"sync"
	"testing"
)

func TestVMAs(t *testing.T) {
	var s VMAs
	a, b, c := &VMA{Start: 0x1000, End: 0x3000}, &VMA{Start: 0x3000, End: 0x4000}, &VMA{Start: 0x8000, End: 0x9000}
	for _, v := range []*VMA{c, a, b} {
		if err := s.Insert(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Insert(&VMA{Start: 0x2fff, End: 0x3001}); !errors.Is(err, ErrOverlap) {
		t.Fatalf("overlap accepted: %v", err)
	}
	if err := s.Insert(&VMA{Start: 5, End: 5}); err == nil {
		t.Fatal("empty VMA accepted")
	}
	if s.Find(0x2fff) != a || s.Find(0x3000) != b || s.Find(0x5000) != nil || s.Find(0x8fff) != c {
		t.Fatal("Find")
	}
	got := s.Intersecting(0x2000, 0x8001)
	if len(got) != 3 || got[0] != a || got[2] != c {
		t.Fatalf("Intersecting: %v", got)
	}
	if !s.Erase(b) || s.Erase(b) || s.Find(0x3000) != nil || s.Len() != 2 {
		t.Fatal("Erase")
	}
}

// TestVMAsConcurrent: inserts, erases and lookups from several goroutines;
// run with -race. Each goroutine owns a disjoint part of the address space,
// so every operation must succeed and the final set must match.
func TestVMAsConcurrent(t *testing.T) {
	var s VMAs
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			base := uintptr(g) << 32
			var mine []*VMA
			for i := 0; i < 2000; i++ {
				if len(mine) > 0 && rng.Intn(3) == 0 {
					k := rng.Intn(len(mine))
					if !s.Erase(mine[k]) {
						t.Error("erase of own VMA failed")
						return
					}
					mine = append(mine[:k], mine[k+1:]...)
					continue
				}
				v := &VMA{Start: base + uintptr(i)<<12, End: base + uintptr(i+1)<<12}
				if err := s.Insert(v); err != nil {
					t.Error(err)
					return
				}
				mine = append(mine, v)
				if f := s.Find(v.Start); f != v {
					t.Error("Find missed own VMA")
					return
				}
				v.Lock() // per-range lock
				v.Data = i
				v.Unlock()
			}
		}()
	}
	wg.Wait()
}
