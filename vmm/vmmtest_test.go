package vmm_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
	"github.com/cumulusdb/cumulus/vmm/kvm"
)

// needKVM skips without /dev/kvm, except under CI=true, where the kernel
// must never be skipped.
func needKVM(t testing.TB) {
	t.Helper()
	if err := kvm.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but KVM is unavailable: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

var (
	guestOnce sync.Once
	guestImg  *vmm.Image
	guestErr  error
)

// guestImage builds testdata/guest and bundles it with the kernel, once.
func guestImage(t testing.TB) *vmm.Image {
	t.Helper()
	needKVM(t)
	guestOnce.Do(func() {
		dir, err := os.MkdirTemp("", "guest-")
		if err != nil {
			guestErr = err
			return
		}
		out := filepath.Join(dir, "guest")
		cmd := exec.Command("go", "build", "-o", out, "./testdata/guest")
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			guestErr = &buildError{err, string(msg)}
			return
		}
		prog, err := os.ReadFile(out)
		if err != nil {
			guestErr = err
			return
		}
		guestImg, guestErr = build.Image("guest", prog)
	})
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestImg
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }
