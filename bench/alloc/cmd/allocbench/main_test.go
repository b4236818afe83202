package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A tiny run of the command writes its report and plot.
func TestSmallRun(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "allocbench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-threads", "1,2", "-bulk", "2000", "-random", "1000", "-pipeline", "2000", "-reps", "1", "-out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "llfree") {
		t.Errorf("no llfree row:\n%s", out)
	}
	for _, f := range []string{"alloc.json", "alloc.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
}
