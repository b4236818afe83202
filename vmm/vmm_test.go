package vmm_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm"
)

type run struct {
	res            vmm.Result
	err            error
	stdout, stderr string
}

func boot(t *testing.T, cpus int, mem uint64, timeout time.Duration, args ...string) run {
	t.Helper()
	img := guestImage(t)
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{
		CPUs: cpus, MemBytes: mem, Timeout: timeout,
		Args:   append([]string{"guest"}, args...),
		Env:    []string{"CUMULUS_TEST_ENV=yes", "HOME=/"},
		Stdout: &out, Stderr: &errb,
	})
	return run{res, err, out.String(), errb.String()}
}

func expectOK(t *testing.T, r run, checks ...string) {
	t.Helper()
	if r.err != nil || r.res.ExitCode != 0 {
		t.Fatalf("exit %d, err %v\nstdout:\n%s\nstderr:\n%s", r.res.ExitCode, r.err, r.stdout, r.stderr)
	}
	for _, c := range checks {
		name, _, _ := strings.Cut(c, "=")
		if !strings.Contains(r.stdout, "ok "+name+"\n") {
			t.Errorf("check %s did not report ok\nstdout:\n%s\nstderr:\n%s", name, r.stdout, r.stderr)
		}
	}
}

// TestRuntime boots a program using goroutines, channels, timers, mutex
// contention, panic/recover and standard-library packages, on 1 and 2 vCPUs.
func TestRuntime(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		checks := []string{"args", "procs=" + string(rune('0'+cpus)), "goroutines", "timers", "mutex", "panic", "stdlib", "threadexit"}
		expectOK(t, boot(t, cpus, 512<<20, 2*time.Minute, checks...), checks...)
	}
}

// TestGCChurn allocates 3 GiB in a 512 MiB guest: the heap must be reused
// (MADV_DONTNEED zeroes, scavenged memory is recycled) without corruption.
func TestGCChurn(t *testing.T) {
	expectOK(t, boot(t, 2, 512<<20, 3*time.Minute, "gc"), "gc")
}

// TestRepeat boots the same image 20 times in a row: boot, SMP start-up and
// shutdown must be free of races.
func TestRepeat(t *testing.T) {
	n := 20
	if testing.Short() {
		n = 5
	}
	for i := 0; i < n; i++ {
		r := boot(t, 2, 256<<20, time.Minute, "goroutines", "timers", "mutex")
		if r.err != nil || r.res.ExitCode != 0 {
			t.Fatalf("boot %d: exit %d err %v\n%s\n%s", i, r.res.ExitCode, r.err, r.stdout, r.stderr)
		}
	}
}

func TestExitStatus(t *testing.T) {
	r := boot(t, 1, 256<<20, time.Minute, "exit=42")
	if r.err != nil || r.res.ExitCode != 42 || r.res.Reason != "exit" {
		t.Fatalf("got exit %d (%s), err %v; want 42\n%s", r.res.ExitCode, r.res.Reason, r.err, r.stderr)
	}
}

// TestSignals: CPU exceptions become the same recoverable panics as on
// Linux (nil dereference, divide by zero, wild pointer with
// SetPanicOnFault), and SIGURG preempts a loop without calls so that the
// GC can stop the world on a single vCPU.
func TestSignals(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		r := boot(t, cpus, 256<<20, time.Minute, "faults", "preempt")
		expectOK(t, r, "faults", "preempt")
		if r.res.Stats.SignalsFault < 2 || r.res.Stats.SignalsSent == 0 { // nil and wild pointer (Go checks divisors in software)
			t.Errorf("%d vCPUs: %d fault signals, %d signals sent", cpus, r.res.Stats.SignalsFault, r.res.Stats.SignalsSent)
		}
	}
}

// TestFaultReport: a nil dereference the program does not recover from
// stops the VM loudly: the runtime's own panic report, and a non-zero exit.
func TestFaultReport(t *testing.T) {
	r := boot(t, 1, 256<<20, time.Minute, "nil")
	if r.res.ExitCode != 2 || r.res.Reason != "exit" {
		t.Fatalf("exit %d (%s), want 2 (the runtime's exit after an unrecovered panic)\n%s", r.res.ExitCode, r.res.Reason, r.stderr)
	}
	for _, want := range []string{"invalid memory address or nil pointer dereference", "SIGSEGV", "main.run", "guest/main.go:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stderr)
		}
	}
}

// TestTimeout: a guest spinning forever is stopped by -timeout, and the
// tick keeps the rest of the runtime alive meanwhile.
// TestMonitorFaultReport: a fault with no handler stops the VM with the
// monitor's report: exception, address, function and file:line,
// registers, backtrace, and a SIGSEGV-style exit status.
func TestMonitorFaultReport(t *testing.T) {
	r := boot(t, 1, 256<<20, time.Minute, "segv-default")
	if r.res.ExitCode != 128+11 || r.res.Reason != "fault" {
		t.Fatalf("exit %d (%s), want 139 (fault)\n%s", r.res.ExitCode, r.res.Reason, r.stderr)
	}
	for _, want := range []string{"page fault", "address 0x0", "main.run", "guest/main.go:", "backtrace", "main.main", "rip"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestTimeout(t *testing.T) {
	start := time.Now()
	r := boot(t, 1, 256<<20, 2*time.Second, "spin")
	if !errors.Is(r.err, vmm.ErrTimeout) || r.res.ExitCode != 124 {
		t.Fatalf("err %v exit %d, want timeout/124", r.err, r.res.ExitCode)
	}
	if time.Since(start) > time.Minute {
		t.Fatalf("timeout took %v", time.Since(start))
	}
	if r.res.Stats.TicksDelivered == 0 {
		t.Errorf("no preemption tick was delivered to the spinning vCPU: %+v", r.res.Stats)
	}
	// The hang report locates the vCPU: RIP, symbol and a backtrace (it
	// may catch it in the program or, between ticks, in the kernel).
	for _, want := range []string{"timeout after", "vCPU 0: rip 0x", "backtrace:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("hang report lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestRefusesUnsupported(t *testing.T) {
	if err := vmm.CheckProgram([]byte("#!/bin/sh\necho hi\n")); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("script: %v", err)
	}
	if data, err := os.ReadFile("/bin/true"); err == nil {
		if err := vmm.CheckProgram(data); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Errorf("/bin/true (dynamic C program): %v", err)
		}
	}
	img := guestImage(t)
	if _, err := vmm.DecodeImage(img.Program); !errors.Is(err, vmm.ErrNotImage) {
		t.Errorf("bare ELF as image: %v", err)
	}
	round, err := vmm.DecodeImage(img.Encode())
	if err != nil || !bytes.Equal(round.Program, img.Program) || !bytes.Equal(round.Kernel, img.Kernel) {
		t.Errorf("image round trip: %v", err)
	}
	data := img.Encode()
	if _, err := vmm.DecodeImage(data[:len(data)-1]); err == nil {
		t.Errorf("truncated image accepted")
	}
}

// TestKapi: kapi inside the image picks the unikernel implementation;
// ranges are reserved, committed, demand-paged, discarded and freed, and
// presence is answered by walking the page table from the program.
func TestKapi(t *testing.T) {
	expectOK(t, boot(t, 2, 512<<20, time.Minute, "kapi"), "kapi")
}

// TestReclaim: by default, a large discard returns its frames after a
// TLB shootdown run by the monitor on every vCPU.
func TestReclaim(t *testing.T) {
	img := guestImage(t)
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{CPUs: 2, MemBytes: 512 << 20, Timeout: time.Minute,
		Args: []string{"guest", "kapi=reclaim"}, Stdout: &out, Stderr: &errb})
	expectOK(t, run{res, err, out.String(), errb.String()}, "kapi")
	if res.Stats.Shootdowns == 0 || res.Stats.TLBFlushes < 2*res.Stats.Shootdowns || res.Stats.FramesReclaimed < 2048 {
		t.Errorf("shootdowns %d, flushes %d, frames reclaimed %d", res.Stats.Shootdowns, res.Stats.TLBFlushes, res.Stats.FramesReclaimed)
	}
}

// TestFrames: kapi frames inside the image come from the kernel's LLFree
// allocator through kernel calls: aligned huge frames, double frees
// refused, and a concurrent stress on all vCPUs that never hands a frame to
// two owners and gives every frame back.
func TestFrames(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		expectOK(t, boot(t, cpus, 512<<20, 2*time.Minute, "frames"), "frames")
	}
}

// TestShares: host directories in the guest, read-write and read-only.
func TestShares(t *testing.T) {
	img := guestImage(t)
	tmp, ro := t.TempDir(), t.TempDir()
	if err := os.WriteFile(ro+"/hello.txt", []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{
		CPUs: 2, MemBytes: 256 << 20, Timeout: time.Minute,
		Args: []string{"guest", "files"}, Env: []string{"TMPDIR=/tmp"},
		Shares: []vmm.Share{{Host: tmp, Guest: "/tmp"}, {Host: ro, Guest: "/ro", ReadOnly: true}},
		Cwd:    "/ro", Stdout: &out, Stderr: &errb,
	})
	expectOK(t, run{res, err, out.String(), errb.String()}, "files")
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("guest left %d entries in the shared /tmp", len(ents))
	}
	if _, err := os.Stat(ro + "/new.txt"); err == nil {
		t.Error("guest wrote into a read-only share")
	}
}

// TestShootdown: discarded frames are reused only after
// every vCPU's TLB was flushed: a reader on another vCPU never sees a
// freed frame's new contents through the old address.
func TestShootdown(t *testing.T) {
	img := guestImage(t)
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{CPUs: 2, MemBytes: 256 << 20, Timeout: time.Minute,
		Args: []string{"guest", "tlb"}, Stdout: &out, Stderr: &errb})
	expectOK(t, run{res, err, out.String(), errb.String()}, "tlb")
	if res.Stats.Shootdowns < 20 {
		t.Errorf("%d shootdowns for 20 discards", res.Stats.Shootdowns)
	}
	t.Logf("%d shootdowns, %d flushes, %d retried", res.Stats.Shootdowns, res.Stats.TLBFlushes, res.Stats.FlushRetries)
}

func TestParseShare(t *testing.T) {
	dir := t.TempDir()
	s, err := vmm.ParseShare(dir + ":/data:ro")
	if err != nil || s.Guest != "/data" || !s.ReadOnly || s.Host != dir {
		t.Errorf("got %+v %v", s, err)
	}
	for _, bad := range []string{"", dir, dir + ":rel", dir + ":/x:rw", "/nonexistent-dir:/x"} {
		if _, err := vmm.ParseShare(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStats(t *testing.T) {
	r := boot(t, 2, 256<<20, time.Minute, "timers")
	expectOK(t, r, "timers")
	s := r.res.Stats
	if s.Syscalls == 0 || s.Exits == 0 || s.HypercallExits["exit"] != 1 || s.UnknownSyscall != 0 {
		t.Errorf("implausible stats: %+v", s)
	}
	// The vDSO serves the clock: clock_gettime (228) is never a system call.
	if n := s.SyscallsByNr[228]; n != 0 {
		t.Errorf("clock_gettime entered the kernel %d times", n)
	}
}

// TestPrecomputedSites: an image carries the system-call sites found when
// it was built; a boot from them rewrites exactly the sites a boot that
// decodes the code finds, and sites that do not fit the code (an image
// from another build) are ignored in favour of decoding.
func TestPrecomputedSites(t *testing.T) {
	img := guestImage(t)
	if len(img.Manifest.ProgramSites) == 0 || len(img.Manifest.NetsvcSites) == 0 {
		t.Fatalf("image without precomputed sites: %d program, %d network service", len(img.Manifest.ProgramSites), len(img.Manifest.NetsvcSites))
	}
	decode := *img
	decode.Manifest.ProgramSites, decode.Manifest.NetsvcSites = nil, nil
	wrong := *img
	wrong.Manifest.ProgramSites = append([]uint64{img.Manifest.ProgramSites[0] + 1}, img.Manifest.ProgramSites[1:]...)
	wrong.Manifest.NetsvcSites = []uint64{0x1000}
	var patched []int
	for _, im := range []*vmm.Image{img, &decode, &wrong} {
		var out, errb bytes.Buffer
		res, err := vmm.Run(im, vmm.Config{CPUs: 2, MemBytes: 256 << 20, Timeout: time.Minute,
			Args: []string{"guest", "goroutines", "timers"}, Stdout: &out, Stderr: &errb})
		expectOK(t, run{res, err, out.String(), errb.String()}, "goroutines", "timers")
		patched = append(patched, res.Stats.PatchedSyscalls)
	}
	if patched[0] == 0 || patched[0] != patched[1] || patched[1] != patched[2] {
		t.Fatalf("sites rewritten: from the manifest %d, decoded %d, from wrong sites %d", patched[0], patched[1], patched[2])
	}
}

// TestPrealloc: with Config.Prealloc the monitor backs all of guest RAM
// before the guest starts, and the guest runs as without it.
func TestPrealloc(t *testing.T) {
	img := guestImage(t)
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{
		CPUs: 2, MemBytes: 512 << 20, Timeout: time.Minute, Prealloc: true,
		Args: []string{"guest", "goroutines", "timers", "mutex"}, Stdout: &out, Stderr: &errb,
	})
	expectOK(t, run{res, err, out.String(), errb.String()}, "goroutines", "timers", "mutex")
}
