package alloc

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunSmall runs every workload at a small size and checks the report's
// shape and outputs (never timings).
func TestRunSmall(t *testing.T) {
	rep, err := Run(Options{Threads: []int{1, 2, 3}, Bulk: 2000, Random: 500, Pipeline: 3000})
	if err != nil {
		t.Fatal(err)
	}
	// 3 allocators × (bulk 3 + random 3 + pipeline 2).
	if len(rep.Results) != 3*8 {
		t.Fatalf("%d results", len(rep.Results))
	}
	for _, r := range rep.Results {
		if r.AllocNs <= 0 || r.FreeNs < 0 {
			t.Errorf("%+v: no time measured", r)
		}
	}
	tab := rep.Table()
	for _, s := range []string{"llfree", "mmap", "goheap", "pipeline", "reference"} {
		if !strings.Contains(tab, s) {
			t.Errorf("table lacks %q:\n%s", s, tab)
		}
	}
	dir := t.TempDir()
	if err := rep.WriteJSON(filepath.Join(dir, "a.json")); err != nil {
		t.Fatal(err)
	}
	b, _ := rep.JSON()
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != len(rep.Results) {
		t.Fatalf("JSON round trip: %v", err)
	}
	if err := rep.WritePNG(filepath.Join(dir, "a.png")); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(Options{Allocators: []string{"nope"}, Bulk: 10}); err == nil {
		t.Fatal("unknown allocator accepted")
	}
}
