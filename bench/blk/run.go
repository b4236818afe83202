package blk

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

// Options control Run; zero fields take defaults.
type Options struct {
	Only     []string      // workload names (default: all)
	Duration time.Duration // per workload and side (default 3 s)
	Size     int64         // disk file size (default 512 MiB)
	Dir      string        // where the disk file lives (default: a temporary directory; O_DIRECT needs a real file system, not tmpfs)
	CPUs     int           // vCPUs and the Linux side's GOMAXPROCS (default 2)
	MemBytes uint64        // guest RAM (default 1 GiB)
	OutDir   string        // blk.json goes here ("" = none)
	Progress io.Writer
	// LinuxOnly skips the image (hosts without /dev/kvm).
	LinuxOnly bool
}

// Row is one workload on both sides.
type Row struct {
	Name           string  `json:"name"`
	LinuxDirect    bool    `json:"linux_o_direct"`
	LinuxIOPS      float64 `json:"linux_iops"`
	ImageIOPS      float64 `json:"image_iops"`
	LinuxMBps      float64 `json:"linux_mb_per_s"`
	ImageMBps      float64 `json:"image_mb_per_s"`
	LinuxLatencyUs float64 `json:"linux_latency_us"`
	ImageLatencyUs float64 `json:"image_latency_us"`
	Ratio          float64 `json:"image_over_linux"` // IOPS ratio (>1: the image is faster)
	// The Linux side through the host page cache, a
	// second baseline (the monitor's disk model uses O_DIRECT for aligned
	// transfers, so the O_DIRECT figure is the like-for-like one).
	LinuxBufIOPS  float64 `json:"linux_buffered_iops"`
	LinuxBufMBps  float64 `json:"linux_buffered_mb_per_s"`
	RatioBuffered float64 `json:"image_over_linux_buffered"`
	// Per request in the image: register accesses (each a VM exit; the
	// setup's few are included) and device interrupts (sleeps ended).
	ImageMMIOPerOp float64 `json:"image_mmio_exits_per_op"`
	ImageIRQPerOp  float64 `json:"image_irqs_per_op"`
	ImageExitsOp   float64 `json:"image_exits_per_op"`
}

// Report is the whole run.
type Report struct {
	Name      string    `json:"name"`
	When      time.Time `json:"when"`
	CPUs      int       `json:"vcpus"`
	SizeMiB   int64     `json:"disk_mib"`
	Seconds   float64   `json:"seconds_per_workload"`
	LinuxPath string    `json:"linux_file"`
	Rows      []Row     `json:"rows"`
}

// Run builds bench/blk/blkguest, creates and fills the disk file, and runs
// every workload as a Linux process on the file (O_DIRECT) and in an image
// with the file as /dev/vda.
func Run(o Options) (*Report, error) {
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if o.Size == 0 {
		o.Size = 512 << 20
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.MemBytes == 0 {
		o.MemBytes = 1 << 30
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	names := o.Only
	if len(names) == 0 {
		for _, w := range Workloads {
			names = append(names, w.Name)
		}
	}
	for _, n := range names {
		if _, err := Lookup(n); err != nil {
			return nil, err
		}
	}
	tmp, err := os.MkdirTemp(o.Dir, "cumulus-bench-blk-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "blkguest")
	if err := build.ModuleBinary("./bench/blk/blkguest", bin); err != nil {
		return nil, fmt.Errorf("bench/blk: build guest: %w", err)
	}
	disk := filepath.Join(tmp, "disk.img")
	fmt.Fprintf(o.Progress, "filling %s (%d MiB)...\n", disk, o.Size>>20)
	if err := fill(disk, o.Size); err != nil {
		return nil, err
	}
	var img *vmm.Image
	if !o.LinuxOnly {
		prog, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		if img, err = build.Image("blkguest", prog); err != nil {
			return nil, err
		}
	}
	rep := &Report{Name: "blk", When: time.Now(), CPUs: o.CPUs, SizeMiB: o.Size >> 20, Seconds: o.Duration.Seconds(), LinuxPath: disk}
	secs := fmt.Sprint(o.Duration.Seconds())
	for _, name := range names {
		fmt.Fprintf(o.Progress, "%-18s linux...", name)
		c := exec.Command(bin, "-dev", disk, "-w", name, "-t", secs)
		c.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", o.CPUs))
		var errb bytes.Buffer
		c.Stderr = &errb
		out, err := c.Output()
		if err != nil {
			return nil, fmt.Errorf("bench/blk: linux %s: %v\n%s", name, err, errb.String())
		}
		lin, err := parse(out)
		if err != nil {
			return nil, fmt.Errorf("bench/blk: linux %s: %w", name, err)
		}
		row := Row{Name: name, LinuxDirect: lin.Direct, LinuxIOPS: lin.IOPS, LinuxMBps: lin.MBps, LinuxLatencyUs: lin.LatencyUs}
		fmt.Fprintf(o.Progress, " %.0f IOPS %.1f MB/s", lin.IOPS, lin.MBps)
		c = exec.Command(bin, "-dev", disk, "-w", name, "-t", secs, "-buffered")
		c.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", o.CPUs))
		errb.Reset()
		c.Stderr = &errb
		if out, err = c.Output(); err != nil {
			return nil, fmt.Errorf("bench/blk: linux buffered %s: %v\n%s", name, err, errb.String())
		}
		buf, err := parse(out)
		if err != nil {
			return nil, fmt.Errorf("bench/blk: linux buffered %s: %w", name, err)
		}
		row.LinuxBufIOPS, row.LinuxBufMBps = buf.IOPS, buf.MBps
		fmt.Fprintf(o.Progress, "; buffered %.0f IOPS", buf.IOPS)
		if img != nil {
			fmt.Fprintf(o.Progress, "; image...")
			var stdout, stderr bytes.Buffer
			res, err := vmm.Run(img, vmm.Config{CPUs: o.CPUs, MemBytes: o.MemBytes, Timeout: 5 * time.Minute,
				Args:   []string{"blkguest", "-dev", "/dev/vda", "-w", name, "-t", secs},
				Stdout: &stdout, Stderr: &stderr, Disks: []vmm.Disk{{Path: disk}}})
			if err != nil || res.ExitCode != 0 {
				return nil, fmt.Errorf("bench/blk: image %s: exit %d %v\n%s", name, res.ExitCode, err, stderr.String())
			}
			im, err := parse(stdout.Bytes())
			if err != nil {
				return nil, fmt.Errorf("bench/blk: image %s: %w", name, err)
			}
			row.ImageIOPS, row.ImageMBps, row.ImageLatencyUs = im.IOPS, im.MBps, im.LatencyUs
			if lin.IOPS > 0 {
				row.Ratio = im.IOPS / lin.IOPS
			}
			if buf.IOPS > 0 {
				row.RatioBuffered = im.IOPS / buf.IOPS
			}
			if im.Ops > 0 {
				ops := float64(im.Ops)
				row.ImageMMIOPerOp = float64(res.Stats.MMIOExits) / ops
				row.ImageIRQPerOp = float64(res.Stats.DeviceIRQs) / ops
				row.ImageExitsOp = float64(res.Stats.Exits) / ops
			}
			fmt.Fprintf(o.Progress, " %.0f IOPS %.1f MB/s (%.2fx)", im.IOPS, im.MBps, row.Ratio)
		}
		fmt.Fprintln(o.Progress)
		rep.Rows = append(rep.Rows, row)
	}
	if o.OutDir != "" {
		if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
			return rep, err
		}
		j, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(filepath.Join(o.OutDir, "blk.json"), j, 0o644); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// fill writes the whole file with non-zero data, so reads hit allocated
// blocks on both sides (a sparse file would read holes for free).
func fill(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i*31 + 7)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off); err != nil {
			f.Close()
			return fmt.Errorf("bench/blk: fill %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func parse(out []byte) (Result, error) {
	for _, line := range strings.Split(string(out), "\n") {
		var r Result
		if json.Unmarshal([]byte(line), &r) == nil && r.Ops > 0 {
			return r, nil
		}
	}
	return Result{}, fmt.Errorf("no result in output %q", out)
}

// Table renders the report for a terminal.
func (r *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "CumulusDB block I/O through kapi.BlockQueue: image (virtio-blk, /dev/vda) vs Linux process (O_DIRECT), same file, %d MiB, %.3g s each, %d vCPUs / GOMAXPROCS\n",
		r.SizeMiB, r.Seconds, r.CPUs)
	fmt.Fprintf(&b, "%-18s %12s %12s %12s %8s %8s %10s %10s %10s %10s %9s %9s\n", "workload", "linux IOPS", "linux-buf", "image IOPS", "ratio", "vs buf",
		"linux MB/s", "image MB/s", "linux µs", "image µs", "mmio/op", "irq/op")
	for _, x := range r.Rows {
		if !x.LinuxDirect && x.LinuxIOPS > 0 {
			x.Name += "*"
		}
		fmt.Fprintf(&b, "%-18s %12.0f %12.0f %12.0f %7.2fx %7.2fx %10.1f %10.1f %10.1f %10.1f %9.3f %9.3f\n", x.Name, x.LinuxIOPS, x.LinuxBufIOPS, x.ImageIOPS,
			x.Ratio, x.RatioBuffered, x.LinuxMBps, x.ImageMBps, x.LinuxLatencyUs, x.ImageLatencyUs, x.ImageMMIOPerOp, x.ImageIRQPerOp)
	}
	fmt.Fprintf(&b, "ratio: image/Linux O_DIRECT (like for like: the monitor's disk model uses O_DIRECT for aligned transfers); vs buf: image/Linux through the host's page cache.\n")
	for _, x := range r.Rows {
		if !x.LinuxDirect && x.LinuxIOPS > 0 {
			fmt.Fprintf(&b, "* the Linux side could not use O_DIRECT here (tmpfs?): its reads may come from the page cache; use -dir on a real file system\n")
			break
		}
	}
	return b.String()
}
