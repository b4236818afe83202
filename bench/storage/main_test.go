package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestSmallRun runs the whole comparison on a tiny data set and checks that
// every engine produced every measurement and the report and plots exist.
func TestSmallRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three storage engines")
	}
	out := t.TempDir()
	os.Args = []string{"storage", "-out", out, "-dir", t.TempDir(), "-keys", "3000", "-batch", "100",
		"-duration", "100ms", "-clients", "2"}
	main()
	js, err := os.ReadFile(filepath.Join(out, "storage.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range rep.Results {
		if r.Ops <= 0 || r.OpsPerS <= 0 {
			t.Fatalf("empty measurement %+v", r)
		}
		count[r.Setting+"/"+r.Engine]++
	}
	for _, k := range []string{"in-memory/cumulus", "in-memory/pebble", "in-memory/bbolt"} {
		if count[k] != 6 {
			t.Fatalf("%s: %d workloads, want 6 (load + 5)", k, count[k])
		}
	}
	for _, k := range []string{"4x-pool/cumulus", "4x-pool/cumulus-buffered", "4x-pool/pebble", "4x-pool/bbolt"} {
		if count[k] != 5 {
			t.Fatalf("%s: %d workloads, want 5", k, count[k])
		}
	}
	if rep.Ratios["in-memory/rndread/pebble"] <= 0 || rep.Ratios["4x-pool/ycsb-c/cumulus-buffered/bbolt"] <= 0 {
		t.Fatalf("ratios missing: %v", rep.Ratios)
	}
	for _, f := range []string{"storage-in-memory.png", "storage-4x-pool.png", "storage-ratios.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Fatalf("plot %s: %v", f, err)
		}
	}
}
