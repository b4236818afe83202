// Package blk is the block-I/O benchmark (DESIGN §5, devices): 4 KiB
// random read/write IOPS and sequential MB/s through kapi.BlockQueue, in
// the image through the guest's virtio-blk driver (/dev/vda on a host
// file) against a Linux process doing O_DIRECT on the same host file, in
// one run. The same program (bench/blk/blkguest) runs on both sides, like
// bench/core's coreguest; Run boots it once per workload so the monitor's
// counts (MMIO exits = notifications, device interrupts) are per workload.
//
// Measure is the workload loop both sides run: it keeps Depth requests in
// flight, collects completions with Wait and resubmits them as one batch.
package blk

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cumulusdb/cumulus/kapi"
)

// Workload is one measurement.
type Workload struct {
	Name   string
	Op     kapi.BlockOp
	Size   int  // bytes per request
	Depth  int  // requests in flight
	Random bool // random block-aligned offsets, else sequential
}

// Workloads run by default, in order (the sequential write fills the
// area the reads then read).
var Workloads = []Workload{
	{"seqwrite-256k", kapi.BlockWrite, 256 << 10, 8, false},
	{"seqread-256k", kapi.BlockRead, 256 << 10, 8, false},
	{"randread-4k-qd32", kapi.BlockRead, 4096, 32, true},
	{"randwrite-4k-qd32", kapi.BlockWrite, 4096, 32, true},
	{"randread-4k-qd1", kapi.BlockRead, 4096, 1, true},
}

// Lookup returns the workload with the given name.
func Lookup(name string) (Workload, error) {
	for _, w := range Workloads {
		if w.Name == name {
			return w, nil
		}
	}
	return Workload{}, fmt.Errorf("bench/blk: unknown workload %q", name)
}

// Result is one workload's figures on one side.
type Result struct {
	Name    string  `json:"name"`
	Ops     int     `json:"ops"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	IOPS    float64 `json:"iops"`
	MBps    float64 `json:"mb_per_s"`
	// LatencyUs is the mean time a request spent in flight.
	LatencyUs float64 `json:"latency_us"`
	// Direct: no page cache in the guest/process (Linux: O_DIRECT took).
	Direct bool `json:"direct"`
}

// Measure runs w on q for about dur over the first span bytes of the
// device (writes end with a flush, counted in the time).
func Measure(q kapi.BlockQueue, w Workload, span int64, dur time.Duration) (Result, error) {
	depth := min(w.Depth, q.Depth())
	size := min(w.Size, q.MaxTransfer())
	span -= span % int64(size)
	if span < int64(size)*int64(depth) {
		return Result{}, fmt.Errorf("bench/blk: %s: device of %d bytes is too small", w.Name, span)
	}
	bufs := make([][]byte, depth)
	for i := range bufs {
		b, err := q.AllocBuffer(size)
		if err != nil {
			return Result{}, err
		}
		defer q.FreeBuffer(b)
		b = b[:size]
		for j := range b {
			b[j] = byte(i*7 + j)
		}
		bufs[i] = b
	}
	rng := rand.New(rand.NewPCG(1, uint64(w.Size)))
	var seq int64
	next := func() int64 {
		if w.Random {
			return rng.Int64N(span/int64(size)) * int64(size)
		}
		off := seq
		seq = (seq + int64(size)) % span
		return off
	}
	reqs := make([]kapi.BlockRequest, 0, depth)
	started := make([]time.Time, depth)
	for i := 0; i < depth; i++ {
		reqs = append(reqs, kapi.BlockRequest{Op: w.Op, Off: next(), Buf: bufs[i], Tag: uint64(i)})
	}
	out := make([]kapi.BlockCompletion, depth)
	var res Result
	var inFlight time.Duration
	start := time.Now()
	end := start.Add(dur)
	pending := 0
	for {
		now := time.Now()
		for i := range reqs {
			started[reqs[i].Tag] = now
		}
		for len(reqs) > 0 {
			n, err := q.Submit(reqs)
			if err != nil {
				return res, fmt.Errorf("bench/blk: %s: %w", w.Name, err)
			}
			if n == 0 {
				return res, fmt.Errorf("bench/blk: %s: queue of depth %d refused a request with %d in flight", w.Name, q.Depth(), pending)
			}
			pending += n
			reqs = reqs[n:]
		}
		if pending == 0 {
			break
		}
		n := q.Wait(out, 10*time.Second)
		if n == 0 {
			return res, fmt.Errorf("bench/blk: %s: no completion in 10 s", w.Name)
		}
		now = time.Now()
		reqs = reqs[:0]
		for _, c := range out[:n] {
			pending--
			if c.Err != nil {
				return res, fmt.Errorf("bench/blk: %s: %w", w.Name, c.Err)
			}
			res.Ops++
			res.Bytes += int64(c.N)
			inFlight += now.Sub(started[c.Tag])
			if now.Before(end) {
				reqs = append(reqs, kapi.BlockRequest{Op: w.Op, Off: next(), Buf: bufs[c.Tag], Tag: c.Tag})
			}
		}
	}
	if w.Op == kapi.BlockWrite {
		if n, err := q.Submit([]kapi.BlockRequest{{Op: kapi.BlockFlush}}); n != 1 || err != nil {
			return res, fmt.Errorf("bench/blk: %s: flush: %v", w.Name, err)
		}
		if n := q.Wait(out[:1], time.Minute); n != 1 || out[0].Err != nil {
			return res, fmt.Errorf("bench/blk: %s: flush: %v", w.Name, out[0].Err)
		}
	}
	el := time.Since(start).Seconds()
	res.Name, res.Seconds = w.Name, el
	res.IOPS = float64(res.Ops) / el
	res.MBps = float64(res.Bytes) / el / 1e6
	if res.Ops > 0 {
		res.LatencyUs = inFlight.Seconds() * 1e6 / float64(res.Ops)
	}
	return res, nil
}
