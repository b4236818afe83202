package main

import (
	"encoding/json"
	"os/exec"
	"testing"
)

// The guest program runs as a Linux process too (that is the baseline):
// check that a benchmark reports a plausible JSON result.
func TestReportsJSON(t *testing.T) {
	bin := t.TempDir() + "/coreguest"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, name := range []string{"time.Now", "presence", "frames-pipeline"} {
		out, err := exec.Command(bin, name).Output()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var r result
		if err := json.Unmarshal(out, &r); err != nil || r.Name != name || r.Ops <= 0 || r.NsPerOp <= 0 {
			t.Errorf("%s: %q %v", name, out, err)
		}
	}
	if err := exec.Command(bin, "no-such-benchmark").Run(); err == nil {
		t.Error("unknown benchmark accepted")
	}
}
