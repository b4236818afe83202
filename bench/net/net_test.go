package net

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReport: the table names both sides with their ratio, and the JSON
// and plot are written. (The measurement itself boots images: `cumulus
// bench net`.)
func TestReport(t *testing.T) {
	r := &Report{Requests: 10, Size: 64, BulkMiB: 1, CPUs: 2,
		Linux: Side{RRp50us: 30, RRp99us: 90, RRPerSec: 30000, BulkMBps: 1000},
		Image: Side{RRp50us: 60, RRp99us: 200, RRPerSec: 15000, BulkMBps: 100, ExitsPerRR: 3}}
	tab := r.Table()
	if !strings.Contains(tab, "2.00x") || !strings.Contains(tab, "3.00 VM exits") {
		t.Errorf("table:\n%s", tab)
	}
	dir := t.TempDir()
	if err := r.WriteJSON(filepath.Join(dir, "net.json")); err != nil {
		t.Fatal(err)
	}
	if err := r.WritePNG(filepath.Join(dir, "net.png")); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "net.png")); err != nil || st.Size() == 0 {
		t.Errorf("plot: %v", err)
	}
}
