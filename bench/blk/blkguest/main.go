// Command blkguest runs one block-I/O workload of bench/blk through
// kapi.BlockQueue and prints its result as one JSON line. The same binary
// runs as a Linux process (a file with O_DIRECT) and inside an image
// (/dev/vda: the virtio-blk driver), so the two figures compare the same
// code (DESIGN §1.7).
//
//	blkguest -dev PATH -w WORKLOAD [-t SECONDS] [-span BYTES] [-buffered]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cumulusdb/cumulus/bench/blk"
	"github.com/cumulusdb/cumulus/kapi"
	_ "github.com/cumulusdb/cumulus/kapi/linux"
	_ "github.com/cumulusdb/cumulus/kapi/unikernel"
)

func main() {
	dev := flag.String("dev", "/dev/vda", "device or file")
	name := flag.String("w", "randread-4k-qd32", "workload")
	secs := flag.Float64("t", 3, "seconds per workload")
	span := flag.Int64("span", 0, "bytes of the device to use (0: all)")
	buffered := flag.Bool("buffered", false, "Linux: through the page cache (no O_DIRECT)")
	flag.Parse()
	if err := run(*dev, *name, time.Duration(*secs*float64(time.Second)), *span, *buffered); err != nil {
		fmt.Fprintln(os.Stderr, "blkguest:", err)
		os.Exit(1)
	}
}

func run(path, name string, dur time.Duration, span int64, buffered bool) error {
	w, err := blk.Lookup(name)
	if err != nil {
		return err
	}
	k, err := kapi.Default()
	if err != nil {
		return err
	}
	q, err := kapi.OpenBlockQueue(k, path, kapi.BlockOptions{Buffered: buffered})
	if err != nil {
		return err
	}
	defer q.Close()
	if span == 0 || span > q.Size() {
		span = q.Size()
	}
	res, err := blk.Measure(q, w, span, dur)
	if err != nil {
		return err
	}
	res.Direct = true // the image's disk has no page cache in the guest
	if d, ok := q.(interface{ Direct() bool }); ok {
		res.Direct = d.Direct()
	}
	j, _ := json.Marshal(struct {
		blk.Result
		Kernel string `json:"kernel"`
		Depth  int    `json:"queue_depth"`
	}{res, k.Name(), q.Depth()})
	fmt.Println(string(j))
	return nil
}
