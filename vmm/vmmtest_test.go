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

// guestImage is testdata/guest as an image, built once.
func guestImage(t testing.TB) *vmm.Image { return testdataImage(t, "guest") }

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

var (
	testImagesMu sync.Mutex
	testImages   = map[string]*testImage{}
)

type testImage struct {
	once sync.Once
	img  *vmm.Image
	err  error
}

// testdataImage builds testdata/NAME into an image with the kernel (and
// the network service), once per test binary.
func testdataImage(t testing.TB, name string) *vmm.Image {
	t.Helper()
	needKVM(t)
	testImagesMu.Lock()
	ti := testImages[name]
	if ti == nil {
		ti = &testImage{}
		testImages[name] = ti
	}
	testImagesMu.Unlock()
	ti.once.Do(func() {
		dir, err := os.MkdirTemp("", name+"-")
		if err != nil {
			ti.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, "./testdata/"+name)
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			ti.err = &buildError{err, string(msg)}
			return
		}
		prog, err := os.ReadFile(out)
		if err != nil {
			ti.err = err
			return
		}
		ti.img, ti.err = build.Image(name, prog)
	})
	if ti.err != nil {
		t.Fatal(ti.err)
	}
	return ti.img
}
