// Package core measures the unikernel core against Linux in one run: the
// same program (bench/coreguest) runs as a Linux process and inside an
// image, per micro-benchmark, and the report gives each figure beside its
// baseline with the ratio, plus the monitor's and kernel's counts (exits,
// hypercalls, kernel entries) per second of the image run.
package core

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

// Benchmarks run by default, in order.
var Benchmarks = []string{"getpid", "time.Now", "chan-pingpong", "mutex-handoff", "goroutine-spawn", "sleep-1ms", "alloc-gc", "compute"}

// PresenceBenchmarks compare residency checks: kapi.Resident (image: a
// page-table walk by plain loads; Linux: mincore) and, on Linux only, a
// pread of /proc/self/pagemap per check.
var PresenceBenchmarks = []string{"presence", "presence-pagemap"}

// linuxOnly benchmarks have no image side: their row compares the image's
// figure for the benchmark named in the map value with this Linux figure.
var linuxOnly = map[string]string{"presence-pagemap": "presence"}

// Row is one benchmark's figures.
type Row struct {
	Name          string  `json:"name"`
	LinuxNs       float64 `json:"linux_ns_per_op"`
	ImageNs       float64 `json:"image_ns_per_op"`
	Ratio         float64 `json:"image_over_linux"`
	ExitsPerSec   float64 `json:"image_exits_per_s"`
	HCPerSec      float64 `json:"image_hypercalls_per_s"`
	EntryPerSec   float64 `json:"image_kernel_entries_per_s"`
	SyscallsPerOp float64 `json:"image_syscalls_per_op"`
	PTWritesPerOp float64 `json:"image_pt_writes_per_op"`
	FaultsPerOp   float64 `json:"image_page_faults_per_op"`
	LinuxFreeNs   float64 `json:"linux_free_ns_per_op,omitempty"`
	ImageFreeNs   float64 `json:"image_free_ns_per_op,omitempty"`
}

// AllocBenchmarks: a kernel call against a Linux system call, and the
// second talk's bulk workload through kapi.Frames by thread count (4 is
// over-committed on a 2-vCPU machine).
var AllocBenchmarks = []string{"kernel-call", "frames-bulk-1", "frames-bulk-2", "frames-bulk-4", "frames-random-2", "frames-random-4", "frames-pipeline"}

// Startup compares process start and VM boot.
type Startup struct {
	ImagePTWrites uint64  `json:"image_pt_writes"`
	ImageFaults   uint64  `json:"image_page_faults"`
	LinuxToMainMs float64 `json:"linux_start_to_main_ms"`
	ImageToMainMs float64 `json:"image_start_to_main_ms"`
	LinuxTotalMs  float64 `json:"linux_total_ms"`
	ImageTotalMs  float64 `json:"image_total_ms"`
	ImageExits    uint64  `json:"image_exits"`
	ImageSyscalls uint64  `json:"image_syscalls"`
}

// Scaling is compute-parallel (fixed total work split over GOMAXPROCS
// goroutines) on 1 vCPU and on the run's vCPU count, for both sides.
type Scaling struct {
	CPUs         int     `json:"vcpus"`
	Linux1Ns     float64 `json:"linux_1cpu_ns_per_op"`
	LinuxNNs     float64 `json:"linux_ncpu_ns_per_op"`
	Image1Ns     float64 `json:"image_1cpu_ns_per_op"`
	ImageNNs     float64 `json:"image_ncpu_ns_per_op"`
	LinuxSpeedup float64 `json:"linux_speedup"`
	ImageSpeedup float64 `json:"image_speedup"`
}

// Report is the whole run.
type Report struct {
	Name    string    `json:"name"`
	When    time.Time `json:"when"`
	CPUs    int       `json:"vcpus"`
	MemMiB  uint64    `json:"mem_mib"`
	Startup Startup   `json:"startup"`
	Rows    []Row     `json:"rows"`
	Scaling *Scaling  `json:"smp_scaling,omitempty"`
}

// Options control a run.
type Options struct {
	Name     string // report name: files are NAME.json and NAME.png (default "core")
	CPUs     int
	MemBytes uint64
	Only     []string
	OutDir   string
	Progress io.Writer

	keepSyscall bool
}

// Run builds the guest, measures everything and writes core.json and
// core.png into OutDir.
func Run(o Options) (*Report, error) {
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.MemBytes == 0 {
		o.MemBytes = 1 << 30
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	tmp, err := os.MkdirTemp("", "cumulus-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "coreguest")
	if err := build.ModuleBinary("./bench/coreguest", bin); err != nil {
		return nil, fmt.Errorf("bench: build guest: %w", err)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	img, err := build.Image("coreguest", prog)
	if err != nil {
		return nil, err
	}
	rep := &Report{Name: o.Name, When: time.Now(), CPUs: o.CPUs, MemMiB: o.MemBytes >> 20}

	// Start-up: best of 5 each.
	fmt.Fprintf(o.Progress, "start-up (best of 5)...\n")
	rep.Startup.LinuxToMainMs, rep.Startup.LinuxTotalMs = 1e9, 1e9
	rep.Startup.ImageToMainMs, rep.Startup.ImageTotalMs = 1e9, 1e9
	for i := 0; i < 5; i++ {
		toMain, total, err := linuxStartup(bin)
		if err != nil {
			return nil, err
		}
		rep.Startup.LinuxToMainMs = min(rep.Startup.LinuxToMainMs, toMain)
		rep.Startup.LinuxTotalMs = min(rep.Startup.LinuxTotalMs, total)
		start := time.Now()
		res, _, err := runImage(img, o, "ready")
		if err != nil {
			return nil, err
		}
		rep.Startup.ImageTotalMs = min(rep.Startup.ImageTotalMs, ms(time.Since(start)))
		rep.Startup.ImageToMainMs = min(rep.Startup.ImageToMainMs, ms(res.Stats.StartToFirstWrite))
		rep.Startup.ImageExits, rep.Startup.ImageSyscalls = res.Stats.Exits, res.Stats.Syscalls
		rep.Startup.ImagePTWrites, rep.Startup.ImageFaults = res.Stats.PTWrites, res.Stats.PageFaults
	}

	names := Benchmarks
	if len(o.Only) > 0 {
		names = o.Only
	}
	imageNs := map[string]float64{}
	for _, name := range names {
		fmt.Fprintf(o.Progress, "%-16s linux...", name)
		lin, linFree, err := linuxRun(bin, name, o.CPUs)
		if err != nil {
			return nil, err
		}
		if other, ok := linuxOnly[name]; ok {
			// The image answers this with the other benchmark's mechanism.
			img, ok := imageNs[other]
			if !ok {
				return nil, fmt.Errorf("bench: %s needs %s to run first", name, other)
			}
			fmt.Fprintf(o.Progress, " %.1f ns/op; image (%s) %.1f ns/op\n", lin, other, img)
			rep.Rows = append(rep.Rows, Row{Name: name + " vs image " + other, LinuxNs: lin, ImageNs: img, Ratio: img / lin})
			continue
		}
		fmt.Fprintf(o.Progress, " %.1f ns/op; image...", lin)
		res, out, err := runImage(img, o, name)
		if err != nil {
			return nil, err
		}
		imgNs, ops, imgFree, err := parse(out)
		if err != nil {
			return nil, fmt.Errorf("bench: %s in image: %w", name, err)
		}
		// Counts are for the whole boot; subtract the start-up run's.
		secs := res.Stats.Wall.Seconds()
		hc := uint64(0)
		for _, n := range res.Stats.HypercallExits {
			hc += n
		}
		entries := res.Stats.Syscalls + res.Stats.TicksDelivered
		row := Row{Name: name, LinuxNs: lin, ImageNs: imgNs, Ratio: imgNs / lin,
			ExitsPerSec: float64(res.Stats.Exits) / secs, HCPerSec: float64(hc) / secs,
			EntryPerSec:   float64(entries) / secs,
			SyscallsPerOp: float64(int64(res.Stats.Syscalls)-int64(rep.Startup.ImageSyscalls)) / float64(ops),
			LinuxFreeNs:   linFree, ImageFreeNs: imgFree,
			PTWritesPerOp: float64(int64(res.Stats.PTWrites)-int64(rep.Startup.ImagePTWrites)) / float64(ops),
			FaultsPerOp:   float64(int64(res.Stats.PageFaults)-int64(rep.Startup.ImageFaults)) / float64(ops)}
		fmt.Fprintf(o.Progress, " %.1f ns/op (%.2fx)\n", imgNs, row.Ratio)
		rep.Rows = append(rep.Rows, row)
		imageNs[name] = imgNs
		if name == "getpid" {
			// The same, with the program's SYSCALL instructions left as they
			// are: what the call-site rewriting saves.
			keep := o
			keep.keepSyscall = true
			res, out, err := runImage(img, keep, name)
			if err != nil {
				return nil, err
			}
			ns, _, _, err := parse(out)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(o.Progress, "%-16s image with SYSCALL kept: %.1f ns/op\n", "", ns)
			rep.Rows = append(rep.Rows, Row{Name: "getpid (SYSCALL)", LinuxNs: lin, ImageNs: ns, Ratio: ns / lin,
				ExitsPerSec: float64(res.Stats.Exits) / res.Stats.Wall.Seconds()})
		}
	}
	if len(o.Only) == 0 && o.CPUs > 1 {
		sc, err := scaling(img, bin, o)
		if err != nil {
			return nil, err
		}
		rep.Scaling = sc
	}
	if o.OutDir != "" {
		if err := rep.write(o.OutDir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// scaling measures compute-parallel on 1 and o.CPUs processors.
func scaling(img *vmm.Image, bin string, o Options) (*Scaling, error) {
	sc := &Scaling{CPUs: o.CPUs}
	for _, c := range []struct {
		cpus       int
		linux, img *float64
	}{{1, &sc.Linux1Ns, &sc.Image1Ns}, {o.CPUs, &sc.LinuxNNs, &sc.ImageNNs}} {
		fmt.Fprintf(o.Progress, "%-16s %d CPU: linux...", "compute-parallel", c.cpus)
		lin, _, err := linuxRun(bin, "compute-parallel", c.cpus)
		if err != nil {
			return nil, err
		}
		oc := o
		oc.CPUs = c.cpus
		_, out, err := runImage(img, oc, "compute-parallel")
		if err != nil {
			return nil, err
		}
		ns, _, _, err := parse(out)
		if err != nil {
			return nil, err
		}
		*c.linux, *c.img = lin, ns
		fmt.Fprintf(o.Progress, " %.2f ns/op; image %.2f ns/op\n", lin, ns)
	}
	sc.LinuxSpeedup, sc.ImageSpeedup = sc.Linux1Ns/sc.LinuxNNs, sc.Image1Ns/sc.ImageNNs
	return sc, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func runImage(img *vmm.Image, o Options, arg string) (vmm.Result, string, error) {
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{CPUs: o.CPUs, MemBytes: o.MemBytes, Timeout: 5 * time.Minute,
		Args: []string{"coreguest", arg}, Stdout: &out, Stderr: &errb, KeepSyscall: o.keepSyscall})
	if err != nil || res.ExitCode != 0 {
		return res, "", fmt.Errorf("bench: image %s: exit %d %v\n%s", arg, res.ExitCode, err, errb.String())
	}
	return res, out.String(), nil
}

func linuxRun(bin, name string, cpus int) (float64, float64, error) {
	cmd := exec.Command(bin, name)
	cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", cpus))
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("bench: linux %s: %w", name, err)
	}
	ns, _, free, err := parse(string(out))
	return ns, free, err
}

// linuxStartup times exec → first line of output, and exec → exit.
func linuxStartup(bin string) (toMain, total float64, err error) {
	start := time.Now()
	cmd := exec.Command(bin, "ready")
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	r := bufio.NewReader(pipe)
	if _, err := r.ReadString('\n'); err != nil {
		return 0, 0, err
	}
	toMain = ms(time.Since(start))
	io.Copy(io.Discard, r)
	if err := cmd.Wait(); err != nil {
		return 0, 0, err
	}
	return toMain, ms(time.Since(start)), nil
}

func parse(out string) (ns float64, ops int, freeNs float64, err error) {
	for _, line := range strings.Split(out, "\n") {
		var r struct {
			NsPerOp  float64 `json:"ns_per_op"`
			Ops      int     `json:"ops"`
			FreeNsOp float64 `json:"free_ns_per_op"`
		}
		if json.Unmarshal([]byte(line), &r) == nil && r.Ops > 0 {
			return r.NsPerOp, r.Ops, r.FreeNsOp, nil
		}
	}
	return 0, 0, 0, fmt.Errorf("no result in output %q", out)
}

// Table renders the report for a terminal.
func (r *Report) Table() string {
	var b strings.Builder
	s := r.Startup
	fmt.Fprintf(&b, "CumulusDB unikernel core vs Linux process, same binary, %d vCPUs / GOMAXPROCS, %d MiB\n", r.CPUs, r.MemMiB)
	fmt.Fprintf(&b, "start → main:   linux %.2f ms   image %.2f ms   (%.1fx)\n", s.LinuxToMainMs, s.ImageToMainMs, s.ImageToMainMs/s.LinuxToMainMs)
	fmt.Fprintf(&b, "total run:      linux %.2f ms   image %.2f ms   (%.1fx)   image: %d exits, %d syscalls\n", s.LinuxTotalMs, s.ImageTotalMs, s.ImageTotalMs/s.LinuxTotalMs, s.ImageExits, s.ImageSyscalls)
	fmt.Fprintf(&b, "%-16s %12s %12s %8s %10s %12s %12s %10s %10s %10s\n", "benchmark", "linux ns/op", "image ns/op", "ratio", "exits/s", "hypercall/s", "k-entries/s", "sys/op", "ptw/op", "faults/op")
	for _, x := range r.Rows {
		fmt.Fprintf(&b, "%-16s %12.1f %12.1f %7.2fx %10.0f %12.0f %12.0f %10.4f %10.4f %10.4f\n", x.Name, x.LinuxNs, x.ImageNs, x.Ratio, x.ExitsPerSec, x.HCPerSec, x.EntryPerSec, x.SyscallsPerOp, x.PTWritesPerOp, x.FaultsPerOp)
		if x.ImageFreeNs != 0 {
			fmt.Fprintf(&b, "%-16s %12.1f %12.1f %7.2fx   (free)\n", "", x.LinuxFreeNs, x.ImageFreeNs, x.ImageFreeNs/x.LinuxFreeNs)
		}
	}
	if sc := r.Scaling; sc != nil {
		fmt.Fprintf(&b, "SMP speed-up, compute-parallel 1 → %d CPUs: linux %.2fx (%.2f → %.2f ns/op)   image %.2fx (%.2f → %.2f ns/op)\n",
			sc.CPUs, sc.LinuxSpeedup, sc.Linux1Ns, sc.LinuxNNs, sc.ImageSpeedup, sc.Image1Ns, sc.ImageNNs)
	}
	return b.String()
}

func (r *Report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(r, "", "  ")
	name := r.Name
	if name == "" {
		name = "core"
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), j, 0o644); err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = "CumulusDB image time / Linux time, same binary, one run (lower is better)"
	p.Y.Label.Text = "ratio (1 = Linux)"
	vals := make(plotter.Values, len(r.Rows))
	names := make([]string, len(r.Rows))
	for i, x := range r.Rows {
		vals[i] = x.Ratio
		names[i] = x.Name
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(28))
	if err != nil {
		return err
	}
	p.Add(bars)
	line := plotter.NewFunction(func(float64) float64 { return 1 })
	p.Add(line)
	p.NominalX(names...)
	return p.Save(9*vg.Inch, 4*vg.Inch, filepath.Join(dir, name+".png"))
}
