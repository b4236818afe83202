package vmm_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

// Copy-on-write snapshots inside the image (kernel/snapshot.go,
// kernel/mm/cow.go, kapi/unikernel): testdata/snapguest.

var (
	snapOnce sync.Once
	snapImg  *vmm.Image
	snapErr  error
)

func snapGuestImage(t *testing.T) *vmm.Image {
	t.Helper()
	needKVM(t)
	snapOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snapguest-")
		if err != nil {
			snapErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "snapguest")
		cmd := exec.Command("go", "build", "-o", out, "./testdata/snapguest")
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			snapErr = &buildError{err, string(msg)}
			return
		}
		prog, err := os.ReadFile(out)
		if err != nil {
			snapErr = err
			return
		}
		snapImg, snapErr = build.Image("snapguest", prog)
	})
	if snapErr != nil {
		t.Fatal(snapErr)
	}
	return snapImg
}

func bootSnap(t *testing.T, args ...string) (vmm.Result, string) {
	t.Helper()
	var out, errb bytes.Buffer
	res, err := vmm.Run(snapGuestImage(t), vmm.Config{
		CPUs: 2, MemBytes: 1 << 30, Timeout: 4 * time.Minute,
		Args: append([]string{"snapguest"}, args...), Stdout: &out, Stderr: &errb,
	})
	if err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "\nok\n") {
		t.Fatalf("exit %d, %v\nstdout:\n%s\nstderr:\n%s", res.ExitCode, err, out.String(), errb.String())
	}
	return res, out.String()
}

// TestSnapshotImage: exact snapshots under two concurrent writers on two
// vCPUs, a second snapshot taken while the first is being scanned, many
// iterations; writers detect lost writes and stale translations.
func TestSnapshotImage(t *testing.T) {
	iters := "30"
	if testing.Short() {
		iters = "5"
	}
	res, out := bootSnap(t, "check", iters)
	t.Logf("%s", out[strings.LastIndex(out, "counters"):])
	t.Logf("exits %d, TLB flushes %d, page faults %d", res.Stats.Exits, res.Stats.TLBFlushes, res.Stats.PageFaults)
}

// TestSnapshotImageBadInput: unmapped, partly mapped and unaligned ranges,
// a snapshot of a view, munmap of a view and a second release are errors;
// writes stay on their side; no frames leak; discarding a source keeps
// its snapshot.
func TestSnapshotImageBadInput(t *testing.T) {
	_, out := bootSnap(t, "bad")
	t.Logf("%s", out)
}
