package main

import "testing"

// TestMean: operations per second over the samples overlapping a window,
// weighted by the overlap.
func TestMean(t *testing.T) {
	s := []float64{10, 20, 30} // ops/ms in (0,10], (10,20], (20,30]
	ts := []float64{10, 20, 30}
	if got := mean(s, ts, 0, 30); got != 20 {
		t.Errorf("mean over all = %v, want 20", got)
	}
	if got := mean(s, ts, 15, 25); got != 25 {
		t.Errorf("mean over (15,25] = %v, want 25", got)
	}
	if got := mean(s, ts, 40, 50); got != 0 {
		t.Errorf("mean outside = %v, want 0", got)
	}
}
