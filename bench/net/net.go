// Package net measures TCP between the host and a server inside an image
// (ports published by the monitor's user-mode network) against the same
// server as a Linux process on loopback, in one run: request/response
// latency and bulk throughput, with the image's VM exits per request and
// per megabyte.
//
// The server is bench/net/netserver, unchanged in both places. The image
// side crosses: host socket → monitor (gVisor stack, port forward) →
// virtio-net → the image's network service (gVisor stack) → forwarded
// socket calls → the program. The Linux side crosses the host kernel's
// loopback only, so the ratio is the whole cost of the image's path.
package net

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

// Options configure a run.
type Options struct {
	Requests int    // request/response round trips per side (default 5000)
	Size     int    // request and response size in bytes (default 64)
	BulkMiB  int    // bulk transfer size (default 256)
	CPUs     int    // vCPUs of the image (default 2)
	OutDir   string // where net.json and net.png go ("" = none)
	Progress io.Writer
}

// Side is one server's figures.
type Side struct {
	RRp50us      float64 `json:"rr_p50_us"`
	RRp99us      float64 `json:"rr_p99_us"`
	RRPerSec     float64 `json:"rr_per_s"`
	BulkMBps     float64 `json:"bulk_mb_per_s"`
	ExitsPerRR   float64 `json:"exits_per_request,omitempty"`
	ExitsPerMB   float64 `json:"exits_per_mb,omitempty"`
	MMIOPerRR    float64 `json:"mmio_exits_per_request,omitempty"`
	IRQsPerRR    float64 `json:"device_irqs_per_request,omitempty"`
	SyscallsPer  float64 `json:"image_syscalls_per_request,omitempty"`
	ConnectMs    float64 `json:"connect_ms"`
	StartToReady float64 `json:"start_to_listening_ms"`
}

// Report is the whole run.
type Report struct {
	When     time.Time `json:"when"`
	Requests int       `json:"requests"`
	Size     int       `json:"size"`
	BulkMiB  int       `json:"bulk_mib"`
	CPUs     int       `json:"vcpus"`
	Linux    Side      `json:"linux_loopback"`
	Image    Side      `json:"image_published_port"`
}

func (o *Options) defaults() {
	if o.Requests == 0 {
		o.Requests = 5000
	}
	if o.Size == 0 {
		o.Size = 64
	}
	if o.BulkMiB == 0 {
		o.BulkMiB = 256
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Run measures both sides.
func Run(o Options) (*Report, error) {
	o.defaults()
	root, err := build.ModuleRoot()
	if err != nil {
		return nil, err
	}
	prog, err := build.Program(filepath.Join(root, "bench", "net", "netserver"))
	if err != nil {
		return nil, err
	}
	rep := &Report{When: time.Now(), Requests: o.Requests, Size: o.Size, BulkMiB: o.BulkMiB, CPUs: o.CPUs}

	// Linux: the same binary on loopback.
	dir, err := os.MkdirTemp("", "cumulus-netbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "netserver")
	if err := os.WriteFile(bin, prog, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	fmt.Fprintf(o.Progress, "net: Linux process on %s...\n", addr)
	start := time.Now()
	cmd := exec.Command(bin, "-listen", addr)
	cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", o.CPUs))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitPort(addr, 10*time.Second); err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	rep.Linux.StartToReady = ms(time.Since(start))
	err = measure(addr, o, &rep.Linux)
	cmd.Process.Kill()
	cmd.Wait()
	if err != nil {
		return nil, fmt.Errorf("net: linux: %w", err)
	}

	// The image: one boot per phase, so that the exit counts belong to it.
	img, err := build.Image("netserver", prog)
	if err != nil {
		return nil, err
	}
	for _, phase := range []string{"rr", "bulk"} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		fmt.Fprintf(o.Progress, "net: image, %s phase, published on %s...\n", phase, addr)
		var side Side
		stats, err := inImage(img, addr, port, o, phase, &side)
		if err != nil {
			return nil, fmt.Errorf("net: image: %w", err)
		}
		switch phase {
		case "rr":
			rep.Image.RRp50us, rep.Image.RRp99us, rep.Image.RRPerSec = side.RRp50us, side.RRp99us, side.RRPerSec
			rep.Image.ConnectMs, rep.Image.StartToReady = side.ConnectMs, side.StartToReady
			n := float64(o.Requests)
			rep.Image.ExitsPerRR = float64(stats.Exits) / n
			rep.Image.MMIOPerRR = float64(stats.MMIOExits) / n
			rep.Image.IRQsPerRR = float64(stats.DeviceIRQs) / n
			rep.Image.SyscallsPer = float64(stats.Syscalls) / n
		case "bulk":
			rep.Image.BulkMBps = side.BulkMBps
			rep.Image.ExitsPerMB = float64(stats.Exits) / float64(o.BulkMiB)
		}
	}
	if o.OutDir != "" {
		if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
			return nil, err
		}
		if err := rep.WriteJSON(filepath.Join(o.OutDir, "net.json")); err != nil {
			return nil, err
		}
		if err := rep.WritePNG(filepath.Join(o.OutDir, "net.png")); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// inImage boots the server with the port published, runs one phase and
// stops the image through the server's quit job.
func inImage(img *vmm.Image, addr string, port int, o Options, phase string, side *Side) (vmm.Stats, error) {
	type result struct {
		res vmm.Result
		err error
	}
	done := make(chan result, 1)
	var stderr strings.Builder
	start := time.Now()
	go func() {
		res, err := vmm.Run(img, vmm.Config{
			CPUs: o.CPUs, MemBytes: 1 << 30, Timeout: 10 * time.Minute,
			Args:   []string{"netserver", "-listen", ":7"},
			Ports:  []vmm.PortForward{{HostAddr: "127.0.0.1", HostPort: port, GuestPort: 7}},
			Stdout: io.Discard, Stderr: &stderr,
		})
		done <- result{res, err}
	}()
	// The monitor listens at once; the guest is ready when a connection
	// gets through to the server (an echo round trip).
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := probe(addr); err == nil {
			break
		}
		select {
		case r := <-done:
			return vmm.Stats{}, fmt.Errorf("image stopped before serving (exit %d, %v): %s", r.res.ExitCode, r.err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return vmm.Stats{}, fmt.Errorf("image not serving after 60 s: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	side.StartToReady = ms(time.Since(start))
	var err error
	switch phase {
	case "rr":
		err = rr(addr, o, side)
	case "bulk":
		err = bulk(addr, o, side)
	}
	if qc, qerr := net.DialTimeout("tcp", addr, 5*time.Second); qerr == nil {
		fmt.Fprintln(qc, "quit")
		io.ReadAll(qc)
		qc.Close()
	}
	select {
	case r := <-done:
		if err == nil && r.err != nil {
			err = r.err
		}
		return r.res.Stats, err
	case <-time.After(30 * time.Second):
		return vmm.Stats{}, fmt.Errorf("image did not stop after quit")
	}
}

// probe checks that a connection reaches the server, not just a listener
// in front of it: one small round trip.
func probe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "rr 1\nx"); err != nil {
		return err
	}
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	return err
}

func measure(addr string, o Options, side *Side) error {
	if err := rr(addr, o, side); err != nil {
		return err
	}
	return bulk(addr, o, side)
}

func rr(addr string, o Options, side *Side) error {
	t0 := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	side.ConnectMs = ms(time.Since(t0))
	if _, err := fmt.Fprintf(c, "rr %d\n", o.Size); err != nil {
		return err
	}
	msg := make([]byte, o.Size)
	back := make([]byte, o.Size)
	lat := make([]time.Duration, 0, o.Requests)
	begin := time.Now()
	for i := 0; i < o.Requests; i++ {
		t := time.Now()
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return err
		}
		lat = append(lat, time.Since(t))
	}
	total := time.Since(begin)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	side.RRp50us = us(lat[len(lat)/2])
	side.RRp99us = us(lat[len(lat)*99/100])
	side.RRPerSec = float64(o.Requests) / total.Seconds()
	return nil
}

func bulk(addr string, o Options, side *Side) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "bulk\n"); err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	total := int64(o.BulkMiB) << 20
	begin := time.Now()
	for sent := int64(0); sent < total; {
		n, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
		if err != nil {
			return err
		}
		sent += int64(n)
	}
	c.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("bulk: no count back: %w", err)
	}
	elapsed := time.Since(begin)
	got, _ := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if got != total {
		return fmt.Errorf("bulk: server counted %d of %d bytes", got, total)
	}
	side.BulkMBps = float64(total) / 1e6 / elapsed.Seconds()
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitPort(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening: %w", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
func us(d time.Duration) float64 { return float64(d) / 1e3 }

// Table renders the report for a terminal.
func (r *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "TCP, host client; server as a Linux process on loopback vs inside the image (published port), %d vCPUs\n", r.CPUs)
	fmt.Fprintf(&b, "%-28s %14s %14s %10s\n", "", "linux", "image", "image/linux")
	row := func(name string, l, i float64) {
		ratio := 0.0
		if l != 0 {
			ratio = i / l
		}
		fmt.Fprintf(&b, "%-28s %14.1f %14.1f %9.2fx\n", name, l, i, ratio)
	}
	row(fmt.Sprintf("rr %d B p50 (µs)", r.Size), r.Linux.RRp50us, r.Image.RRp50us)
	row(fmt.Sprintf("rr %d B p99 (µs)", r.Size), r.Linux.RRp99us, r.Image.RRp99us)
	row("rr per second", r.Linux.RRPerSec, r.Image.RRPerSec)
	row(fmt.Sprintf("bulk %d MiB (MB/s)", r.BulkMiB), r.Linux.BulkMBps, r.Image.BulkMBps)
	row("connect (ms)", r.Linux.ConnectMs, r.Image.ConnectMs)
	fmt.Fprintf(&b, "image: %.2f VM exits, %.2f MMIO exits, %.2f device interrupts, %.1f system calls per request; %.1f exits per MB of bulk\n",
		r.Image.ExitsPerRR, r.Image.MMIOPerRR, r.Image.IRQsPerRR, r.Image.SyscallsPer, r.Image.ExitsPerMB)
	return b.String()
}

// WriteJSON writes the report.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WritePNG plots request/response latency and bulk throughput, image vs
// Linux.
func (r *Report) WritePNG(path string) error {
	p := plot.New()
	p.Title.Text = "TCP from the host: image (published port) / Linux loopback"
	p.Y.Label.Text = "image / linux (lower is better for latency)"
	vals := plotter.Values{ratio(r.Image.RRp50us, r.Linux.RRp50us), ratio(r.Image.RRp99us, r.Linux.RRp99us), ratio(r.Linux.BulkMBps, r.Image.BulkMBps)}
	bars, err := plotter.NewBarChart(vals, vg.Points(30))
	if err != nil {
		return err
	}
	p.Add(bars)
	p.NominalX("rr p50", "rr p99", "bulk time")
	return p.Save(5*vg.Inch, 3.5*vg.Inch, path)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
