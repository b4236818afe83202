package storage_test

import (
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/cumulusdb/cumulus/kapi/unikernel" // the writer inside the image reaches /dev/vda through it
	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
	"github.com/cumulusdb/cumulus/vmm/kvm"
)

// TestCrashRecoveryImage is the crash test with the writer inside the
// unikernel: this package's test binary boots as an image under our
// monitor, runs TestCrashChild on the virtio disk /dev/vda (a host file),
// and the monitor powers the machine off at a random instant (vmm.Config
// Stop: the guest is not told). The host then opens the same file, which
// runs recovery, and checks it against the model exactly as for a killed
// process. A commit is acknowledged on the guest's console only after the
// engine's flush reached the device, so this checks the whole path: WAL,
// group commit, virtio-blk flush (fdatasync on the host) and the kernel's
// block queue.
//
// CUMULUS_CRASH_IMAGE_ITERS sets the number of power-offs (default 25).
func TestCrashRecoveryImage(t *testing.T) {
	if os.Getenv("CUMULUS_CRASH_DB") != "" {
		t.Skip("child")
	}
	if err := kvm.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but KVM is unavailable: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	iters := 25
	if testing.Short() {
		iters = 8
	}
	if s := os.Getenv("CUMULUS_CRASH_IMAGE_ITERS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			iters = n
		}
	}
	img := storageTestImage(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	// The virtio disk has a fixed size: make the file as large as the
	// engine may grow (crashOptions' MaxSize) before the first open.
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, crashOptions().MaxSize); err != nil {
		t.Fatal(err)
	}
	crashLoop(t, iters, path, func(starts []string) (*crashChild, error) {
		return startImageChild(img, path, starts), nil
	}, func(rng *rand.Rand) time.Duration {
		// Boot and open take a few hundred milliseconds; the range covers
		// power-offs during boot, recovery, and steady writing.
		return time.Duration(50+rng.IntN(1500)) * time.Millisecond
	})
}

// startImageChild boots the writer image on the disk file.
func startImageChild(img *vmm.Image, path string, starts []string) *crashChild {
	pr, pw := io.Pipe()
	stop := make(chan struct{})
	var stderr strings.Builder
	var mu sync.Mutex
	type outcome struct {
		res vmm.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		res, err := vmm.Run(img, vmm.Config{
			CPUs: 2, MemBytes: 512 << 20, Timeout: 2 * time.Minute,
			Args:   []string{"storage.test", "-test.run=^TestCrashChild$", "-test.count=1"},
			Env:    []string{"CUMULUS_CRASH_DB=/dev/vda", "CUMULUS_CRASH_START=" + strings.Join(starts, ",")},
			Disks:  []vmm.Disk{{Path: path}},
			Stdout: pw, Stderr: lockedWriter{&mu, &stderr},
			Stop: stop,
		})
		pw.Close()
		done <- outcome{res, err}
	}()
	return &crashChild{
		stdout: pr,
		kill:   func() { close(stop) },
		wait: func() error {
			o := <-done
			if o.err != nil {
				return o.err
			}
			if o.res.Reason != "stopped" {
				return &stopError{o.res}
			}
			return nil
		},
		stderr: func() string { mu.Lock(); defer mu.Unlock(); return stderr.String() },
	}
}

type stopError struct{ res vmm.Result }

func (e *stopError) Error() string {
	return "image ended by itself (" + e.res.Reason + ", exit " + strconv.Itoa(e.res.ExitCode) + ") before the power-off"
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// storageTestImage compiles this package's tests as a static binary and
// wraps it in an image with the kernel (the running test binary may have
// been built with cgo, and an image needs a static Go program).
func storageTestImage(t *testing.T) *vmm.Image {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "storage.test")
	cmd := exec.Command("go", "test", "-c", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the test binary for the image: %v\n%s", err, msg)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := build.Image("storage.test", prog)
	if err != nil {
		t.Fatalf("building the image: %v", err)
	}
	return img
}
