package linux_test

import (
	"errors"
	"testing"

	"github.com/cumulusdb/cumulus/bench/snapshot/workload"
	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

// TestSnapshotUnderWriters: the Linux fallback (userfaultfd
// write-protection while copying) gives exact snapshots while writers run.
func TestSnapshotUnderWriters(t *testing.T) {
	a, err := workload.NewArea(linux.Kernel{}, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Free()
	method := ""
	err = workload.Check(a, workload.CheckOptions{Writers: 3, Iterations: 20, Log: func(f string, args ...any) {
		if method == "" {
			t.Logf(f, args...)
			method = f
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := kapi.Snapshot(linux.Kernel{}, a.Mem[:1<<20])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("method %s", v.Method)
	if err := kapi.ReleaseSnapshot(linux.Kernel{}, v); err != nil {
		t.Fatal(err)
	}
	if err := kapi.ReleaseSnapshot(linux.Kernel{}, v); !errors.Is(err, kapi.ErrSnapshotReleased) {
		t.Fatalf("second release: %v", err)
	}
}
