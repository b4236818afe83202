package vmm_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm"
)

// netguestImage builds testdata/netguest into an image (with the network
// service), once.
func netguestImage(t testing.TB) *vmm.Image {
	return testdataImage(t, "netguest")
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
		expectOK(t, run{res, err, out.String(), errb.String()}, "echo", "bulk", "http", "errors", "efault")
	}
}

// TestPublishedPorts: an unmodified Go program serves HTTP on :80 and a
// TCP echo on :7 inside the image; the host reaches both through ports
// the monitor publishes (virtio-net, the monitor's user-mode network, the
// image's network service), then stops it through HTTP.
func TestPublishedPorts(t *testing.T) {
	img := netguestImage(t)
	hp, ep := freePort(t), freePort(t)
	var out, errb bytes.Buffer
	done := make(chan run, 1)
	go func() {
		res, err := vmm.Run(img, vmm.Config{CPUs: 2, MemBytes: 512 << 20, Timeout: 2 * time.Minute,
			Args:   []string{"netguest", "serve"},
			Ports:  []vmm.PortForward{{HostAddr: "127.0.0.1", HostPort: hp, GuestPort: 80}, {HostAddr: "127.0.0.1", HostPort: ep, GuestPort: 7}},
			Stdout: &out, Stderr: &errb})
		done <- run{res, err, out.String(), errb.String()}
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", hp)
	var body []byte
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(base + "/hello")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP through the published port: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if string(body) != "hello from the image: /hello\n" {
		t.Errorf("HTTP body %q", body)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ep))
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("echo through the image "), 10000)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	c.Close()
	if err != nil || !bytes.Equal(back, msg) {
		t.Errorf("echo: %d of %d bytes back, %v", len(back), len(msg), err)
	}
	if resp, err := http.Get(base + "/quit"); err == nil {
		resp.Body.Close()
	}
	expectOK(t, <-done, "serve")
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
