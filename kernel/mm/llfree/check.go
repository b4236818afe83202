package llfree

// Check verifies the invariants listed at the top of llfree.go. It is for
// tests and debugging: it must run at quiescence (no Get/Put in flight).
//
// Trap-context constraints: Check allocates nothing and may be called in
// the kernel; only formatting its error (CheckError.Error) allocates.

import (
	"math/bits"
	"strconv"
)

// CheckError describes the first violated invariant.
type CheckError struct {
	What      string
	Index     uint64
	Got, Want uint64
}

func (e *CheckError) Error() string {
	b := []byte("llfree: invariant violated: ")
	b = append(b, e.What...)
	b = append(b, " at "...)
	b = strconv.AppendUint(b, e.Index, 10)
	b = append(b, ": got "...)
	b = strconv.AppendUint(b, e.Got, 10)
	b = append(b, ", want "...)
	b = strconv.AppendUint(b, e.Want, 10)
	return string(b)
}

// checkErr is where Check reports (a global, so reporting allocates
// nothing). Check is not reentrant.
var checkErr CheckError

func fail(what string, i, got, want uint64) error {
	checkErr = CheckError{What: what, Index: i, Got: got, Want: want}
	return &checkErr
}

// Check returns nil if all invariants hold, else a *CheckError.
func (a *Allocator) Check() error {
	if a.meta == nil {
		return nil
	}
	for ar := uint64(0); ar < a.nareas; ar++ {
		if err := a.checkArea(ar); err != nil {
			return err
		}
	}
	for t := uint64(0); t < a.ntrees; t++ {
		if err := a.checkTree(t); err != nil {
			return err
		}
	}
	return nil
}

func (a *Allocator) checkArea(ar uint64) error {
	cw := a.child(ar).Load()
	var set uint64
	for w := uint64(0); w < bitsBytes/8; w++ {
		set += uint64(bits.OnesCount64(a.word(ar, w).Load()))
	}
	if cw&childHuge != 0 {
		if cw&childCount != 0 {
			return fail("huge area with free count", ar, cw&childCount, 0)
		}
		if set != 0 {
			return fail("huge area with bits set", ar, set, 0)
		}
		if cw&childGiant != 0 {
			g := ar / giantAreas * giantAreas
			if a.child(g).Load() != childHuge|childGiant {
				return fail("giant group with unflagged first area", ar, a.child(g).Load(), childHuge|childGiant)
			}
		}
		return nil
	}
	if cw&childGiant != 0 {
		return fail("giant flag without huge flag", ar, cw, childHuge|childGiant)
	}
	if free := areaFrames - set; cw != free {
		return fail("area free count vs bits", ar, cw, free)
	}
	if a.Debug {
		return a.checkOrders(ar)
	}
	return nil
}

// checkOrders verifies that every recorded order covers allocated frames.
func (a *Allocator) checkOrders(ar uint64) error {
	for f := ar * areaFrames; f < (ar+1)*areaFrames && f < a.frames; f++ {
		code := a.orderWord(f).Load() >> ((f % 8) * 4) & 0xf
		if code == 0 {
			continue
		}
		if code == orderCode(GiantOrder) {
			if f%(1<<GiantOrder) != 0 || a.child(ar).Load() != childHuge|childGiant {
				return fail("recorded giant order without giant frame", f, uint64(code), 0)
			}
			continue
		}
		if code > AreaOrder || f&(1<<(code-1)-1) != 0 {
			return fail("recorded order misaligned or too big", f, uint64(code), 0)
		}
		for g := f; g < f+1<<(code-1); g++ {
			if a.isFree(g) {
				return fail("recorded allocation has a free frame", g, 0, 1)
			}
		}
	}
	return nil
}

func (a *Allocator) checkTree(t uint64) error {
	tw := a.tree(t).Load()
	lo, hi := a.treeAreaRange(t)
	var sum uint64
	for ar := lo; ar < hi; ar++ {
		sum += a.child(ar).Load() & childCount
	}
	held, owners := uint64(0), uint64(0)
	for c := 0; c < a.cpus; c++ {
		if w := a.local(c).Load(); w != 0 && w>>32-1 == t {
			held += w & treeCount
			owners++
		}
	}
	if want := uint64(0); tw&treeReserved != 0 {
		want = 1
		if owners != want {
			return fail("reserved tree owners", t, owners, want)
		}
	} else if owners != 0 {
		return fail("unreserved tree owners", t, owners, 0)
	}
	if got := tw&treeCount + held; got != sum {
		return fail("tree free count (tree + reservation) vs areas", t, got, sum)
	}
	return nil
}
