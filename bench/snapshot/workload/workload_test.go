package workload

import (
	"testing"

	"github.com/cumulusdb/cumulus/kapi/linux"
)

// TestCheckLinux runs the exactness check on Linux's snapshot fallback
// (userfaultfd write-protect copy, or a plain copy where that is
// unavailable) with two writers.
func TestCheckLinux(t *testing.T) {
	a, err := NewArea(linux.Kernel{}, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Free()
	if err := Check(a, CheckOptions{Writers: 2, Iterations: 3, Log: t.Logf}); err != nil {
		t.Fatal(err)
	}
}

func TestSum(t *testing.T) {
	w := []uint64{1, 2, 3, 4, 5, 6, 7}
	if Sum(w) != 28 {
		t.Fatalf("Sum = %d", Sum(w))
	}
}
