package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseAndPlot(t *testing.T) {
	out := `number of transactions actually processed: 1234
number of failed transactions: 0 (0.000%)
latency average = 3.026 ms
tps = 2644.145462 (without initial connection time)`
	if m := tpsRE.FindStringSubmatch(out); m == nil || m[1] != "2644.145462" {
		t.Fatalf("tps: %v", m)
	}
	if m := latRE.FindStringSubmatch(out); m == nil || m[1] != "3.026" {
		t.Fatalf("latency: %v", m)
	}
	if m := processRE.FindStringSubmatch(out); m == nil || m[1] != "1234" {
		t.Fatalf("processed: %v", m)
	}
	rep := report{Config: config{Scale: 2, Clients: 4, Duration: "15s", Modes: "simple,prepared"},
		Results: []result{{System: "cumulusdb", Mode: "simple", TPS: 100}, {System: "postgresql-15", Mode: "simple", TPS: 80},
			{System: "cumulusdb", Mode: "prepared", TPS: 120}, {System: "postgresql-15", Mode: "prepared", TPS: 150}},
		Ratios: map[string]float64{"simple": 1.25, "prepared": 0.8}}
	path := filepath.Join(t.TempDir(), "p.png")
	if err := plotReport(rep, path); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Fatalf("plot not written: %v", err)
	}
}
