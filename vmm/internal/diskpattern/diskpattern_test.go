package diskpattern

import (
	"bytes"
	"testing"
)

// TestDeterministic: the guest and the host must compute the same data,
// and different blocks differ.
func TestDeterministic(t *testing.T) {
	a, b, c := make([]byte, 4096), make([]byte, 4096), make([]byte, 4096)
	Pattern(a, 7, 3)
	Pattern(b, 7, 3)
	Pattern(c, 7, 4)
	if !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("pattern not deterministic per (seed, block)")
	}
	s1, r1 := Blocks(7, 1<<14)
	s2, _ := Blocks(7, 1<<14)
	if len(s1) != 1500 || len(r1) != 40 || s1[0] != s2[0] {
		t.Fatalf("blocks: %d single, %d runs", len(s1), len(r1))
	}
}
