// Command allocbench runs the frame-allocation benchmark (package
// bench/alloc) as a Linux process and writes a table, JSON and a PNG plot.
//
//	go run ./bench/alloc/cmd/allocbench -out /tmp/alloc
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cumulusdb/cumulus/bench/alloc"
)

func main() {
	var o alloc.Options
	threads := flag.String("threads", "1,2,4", "thread counts, comma-separated")
	allocs := flag.String("allocators", "llfree,mmap,goheap", "allocators, comma-separated")
	flag.IntVar(&o.Bulk, "bulk", 200_000, "frames per thread, bulk")
	flag.IntVar(&o.Random, "random", 40_000, "frames per thread, random free")
	flag.IntVar(&o.Pipeline, "pipeline", 200_000, "frames per producer, pipeline")
	flag.IntVar(&o.Reps, "reps", 3, "llfree repetitions (best kept; baselines run once)")
	flag.IntVar(&o.BaselineDiv, "baseline-div", 4, "divide frame counts for mmap and goheap by this (1 = same sizes)")
	out := flag.String("out", ".", "directory for alloc.json and alloc.png")
	flag.Parse()
	for _, s := range strings.Split(*threads, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "allocbench: bad thread count %q\n", s)
			os.Exit(2)
		}
		o.Threads = append(o.Threads, n)
	}
	o.Allocators = strings.Split(*allocs, ",")
	rep, err := alloc.Run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "allocbench:", err)
		os.Exit(1)
	}
	fmt.Print(rep.Table())
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "allocbench:", err)
		os.Exit(1)
	}
	if err := rep.WriteJSON(filepath.Join(*out, "alloc.json")); err != nil {
		fmt.Fprintln(os.Stderr, "allocbench:", err)
		os.Exit(1)
	}
	if err := rep.WritePNG(filepath.Join(*out, "alloc.png")); err != nil {
		fmt.Fprintln(os.Stderr, "allocbench:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s and %s\n", filepath.Join(*out, "alloc.json"), filepath.Join(*out, "alloc.png"))
}
