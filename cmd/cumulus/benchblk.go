package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cumulusdb/cumulus/bench/blk"
)

// cmdBenchBlk is `cumulus bench blk`: block I/O through kapi.BlockQueue,
// the image's virtio-blk driver against a Linux process with O_DIRECT on
// the same host file (bench/blk).
func cmdBenchBlk(args []string) error {
	fs := flag.NewFlagSet("bench blk", flag.ExitOnError)
	out := fs.String("out", "out/bench", "directory for blk.json")
	secs := fs.Float64("t", 3, "seconds per workload and side")
	size := fs.String("size", "512M", "disk file size")
	dir := fs.String("dir", "", "directory for the disk file (a real file system, so O_DIRECT works; default $TMPDIR)")
	cpus := fs.Int("cpus", 2, "vCPUs (and GOMAXPROCS for the Linux side)")
	only := fs.String("only", "", "comma-separated workloads (default: all)")
	linuxOnly := fs.Bool("linux-only", false, "skip the image (no /dev/kvm)")
	fs.Parse(args)
	sz, err := parseSize(*size)
	if err != nil {
		return fmt.Errorf("bench blk: -size: %w", err)
	}
	o := blk.Options{Duration: time.Duration(*secs * float64(time.Second)), Size: int64(sz), Dir: *dir, CPUs: *cpus,
		OutDir: *out, Progress: os.Stderr, LinuxOnly: *linuxOnly}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	rep, err := blk.Run(o)
	if err != nil {
		return err
	}
	fmt.Print(rep.Table())
	fmt.Fprintf(os.Stderr, "cumulus: wrote %s/blk.json\n", *out)
	return nil
}
