package vmm_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

var (
	netguestOnce sync.Once
	netguestImg  *vmm.Image
	netguestErr  error
)

// netguestImage builds testdata/netguest into an image (with the network
// service), once.
func netguestImage(t testing.TB) *vmm.Image {
	t.Helper()
	needKVM(t)
	netguestOnce.Do(func() {
		dir, err := os.MkdirTemp("", "netguest-")
		if err != nil {
			netguestErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "netguest")
		cmd := exec.Command("go", "build", "-o", out, "./testdata/netguest")
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			netguestErr = &buildError{err, string(msg)}
			return
		}
		prog, err := os.ReadFile(out)
		if err != nil {
			netguestErr = err
			return
		}
		netguestImg, netguestErr = build.Image("netguest", prog)
	})
	if netguestErr != nil {
		t.Fatal(netguestErr)
	}
	return netguestImg
}

// TestSocketsLoopback: an unmodified Go program uses net inside the image:
// its socket calls go to the network service (gVisor's stack) and its
// netpoller waits in epoll on their readiness. Echo with 16 concurrent
// connections, a 4 MiB transfer with half-close, HTTP, and Linux's
// errors for a refused connection and a used port.
func TestSocketsLoopback(t *testing.T) {
	img := netguestImage(t)
	for _, cpus := range []int{1, 2} {
		var out, errb bytes.Buffer
		res, err := vmm.Run(img, vmm.Config{CPUs: cpus, MemBytes: 512 << 20, Timeout: 2 * time.Minute,
			Args: []string{"netguest", "loopback"}, Stdout: &out, Stderr: &errb})
		expectOK(t, run{res, err, out.String(), errb.String()}, "echo", "bulk", "http", "errors")
	}
}
