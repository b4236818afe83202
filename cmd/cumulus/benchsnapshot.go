package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cumulusdb/cumulus/bench/snapshot"
)

// cmdBenchSnapshot is `cumulus bench snapshot`: the first talk's Figure 2
// (bench/snapshot): an OLAP job on a copy-on-write snapshot while OLTP
// threads write, image (page-table CoW) vs Linux (fork(), userfaultfd).
func cmdBenchSnapshot(args []string) error {
	fs := flag.NewFlagSet("bench snapshot", flag.ExitOnError)
	out := fs.String("out", "out/bench", "directory for snapshot.json and snapshot.png")
	size := fs.String("size", "", "area size (default 4G if MemAvailable allows twice that plus 1 GiB, else halved until it does)")
	threads := fs.Int("threads", 1, "OLTP threads")
	cpus := fs.Int("cpus", 2, "vCPUs (and GOMAXPROCS for the Linux side)")
	before := fs.Duration("before", 0, "OLTP time before the snapshot (default 1s)")
	after := fs.Duration("after", 0, "OLTP time after the snapshot is dropped (default 1s)")
	linuxOnly := fs.Bool("linux-only", false, "skip the image (no /dev/kvm)")
	hot := fs.String("hot", "1,0.25,0.0625,0.015625", "write-set sizes as fractions of the area, comma-separated: each runs every system once (the first gives figures a and b; all give c)")
	reps := fs.Int("reps", 1, "runs per write-set size (interleaved; the sweep reports medians)")
	cold := fs.Bool("cold", false, "boot the image without -mem-prealloc (its copy-on-write frames then pay the host's first touch inside the fault)")
	fs.Parse(args)
	o := snapshot.Options{Threads: *threads, CPUs: *cpus, Before: *before, After: *after, OutDir: *out, Progress: os.Stderr, LinuxOnly: *linuxOnly, Cold: *cold, Reps: *reps}
	for _, f := range strings.Split(*hot, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 || v > 1 {
			return fmt.Errorf("bench snapshot: -hot: %q is not a fraction in (0, 1]", f)
		}
		o.Hot = append(o.Hot, v)
	}
	if *size != "" {
		sz, err := parseSize(*size)
		if err != nil {
			return fmt.Errorf("bench snapshot: -size: %w", err)
		}
		o.Size = sz
	}
	rep, err := snapshot.RunBench(o)
	if err != nil {
		return err
	}
	fmt.Print(rep.Table())
	fmt.Fprintf(os.Stderr, "cumulus: wrote %s/snapshot.json and snapshot.png\n", *out)
	return nil
}
