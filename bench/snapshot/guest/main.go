// Command guest is the snapshot benchmark's program (bench/snapshot): the
// first talk's Figure 2 use case. N OLTP goroutines increment random
// 8-byte records of an area; one OLAP thread takes a snapshot, scans it
// and drops it; a sampler records OLTP operations per 10 ms throughout.
// The same binary runs as a Linux process (modes "kapi" = userfaultfd
// write-protect copy, "fork" = HyPer-style fork() child that scans) and
// in the image (mode "kapi" = page-table copy-on-write). It prints one
// JSON line.
//
// Exactness without stopping writers: writer w owns records
// [w*per, (w+1)*per) and, after each increment, stores its operation
// count in a header word of the area. In a snapshot taken at one instant,
// each writer's record sum minus its header count is 0 or 1 (cut between
// the two stores); anything else is a torn snapshot.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cumulusdb/cumulus/bench/snapshot/workload"
	"github.com/cumulusdb/cumulus/kapi"
	_ "github.com/cumulusdb/cumulus/kapi/linux"
	"github.com/cumulusdb/cumulus/kapi/unikernel"
)

const maxWriters = 64

// Result is the JSON line.
type Result struct {
	Kernel     string    `json:"kernel"`
	Mode       string    `json:"mode"`
	Method     string    `json:"method"`
	SizeBytes  uint64    `json:"size_bytes"`
	Threads    int       `json:"oltp_threads"`
	Hot        float64   `json:"hot_fraction"` // writers write to this fraction of their records
	HelpCopy   bool      `json:"help_copy"`    // the OLAP thread privatised the source before scanning
	HelpMs     float64   `json:"help_ms"`      // of the scan phase: the OLAP thread's copying
	CreateMs   float64   `json:"create_ms"`
	ScanMs     float64   `json:"scan_ms"`
	DestroyMs  float64   `json:"destroy_ms"`
	SampleMs   float64   `json:"sample_ms"`
	StartMs    float64   `json:"snapshot_start_ms"` // snapshot start, on the sample time axis
	Samples    []float64 `json:"ops_per_s"`         // OLTP ops/s per sample interval
	SampleT    []float64 `json:"sample_end_ms"`     // end of each sample interval
	BeforeOps  float64   `json:"before_ops_per_s"`
	DuringOps  float64   `json:"during_scan_ops_per_s"`
	AfterOps   float64   `json:"after_ops_per_s"`
	Consistent bool      `json:"consistent"`
	Checksum   uint64    `json:"checksum"`
	// Image only: kernel counters for this snapshot (create → destroy).
	Counters *unikernel.SnapshotCounters `json:"counters,omitempty"`
}

func main() {
	mode := flag.String("mode", "kapi", "kapi or fork")
	size := flag.Uint64("size", 1<<30, "area bytes")
	threads := flag.Int("threads", 1, "OLTP threads")
	before := flag.Duration("before", time.Second, "OLTP before the snapshot")
	after := flag.Duration("after", time.Second, "OLTP after the snapshot is dropped")
	sample := flag.Duration("sample", 10*time.Millisecond, "sampling interval")
	help := flag.Bool("help-copy", false, "the OLAP thread privatises the source (kapi.PrepareWrite) right after creating the snapshot and before scanning, copying pages beside the writers (a no-op on Linux, whose snapshot is a copy already)")
	hot := flag.Float64("hot", 1, "fraction of its records each writer writes to (1: all, uniformly; 0.01: the first 1%)")
	flag.Parse()
	if *hot <= 0 || *hot > 1 {
		fmt.Fprintln(os.Stderr, "guest: -hot must be in (0, 1]")
		os.Exit(2)
	}
	if err := run(*mode, uintptr(*size), *threads, *hot, *help, *before, *after, *sample); err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		os.Exit(1)
	}
}

type counter struct {
	n atomic.Uint64
	_ [56]byte
}

func run(mode string, size uintptr, nw int, hot float64, help bool, before, after, sample time.Duration) error {
	if nw < 1 || nw > maxWriters {
		return fmt.Errorf("threads must be 1..%d", maxWriters)
	}
	k, err := kapi.Default()
	if err != nil {
		return err
	}
	a, err := workload.NewArea(k, size)
	if err != nil {
		return err
	}
	words := a.Words
	hdr := len(words) - maxWriters
	per := hdr / nw
	res := Result{Kernel: k.Name(), Mode: mode, SizeBytes: uint64(size), Threads: nw, Hot: hot, SampleMs: float64(sample) / 1e6}
	span := uint64(max(1, int(float64(per)*hot))) // records each writer writes to

	var stop atomic.Bool
	counts := make([]counter, nw)
	var wg sync.WaitGroup
	for w := 0; w < nw; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			x := uint64(w)*0x9e3779b97f4a7c15 + 1
			base := w * per
			c := &counts[w]
			n := uint64(0)
			for !stop.Load() {
				for j := 0; j < 64; j++ {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
					r := base + int(x%span)
					words[r]++
					n++
					atomic.StoreUint64(&words[hdr+w], n)
				}
				c.n.Store(n)
			}
		}(w)
	}
	// Sampler.
	var samples, sampleT []float64
	var smu sync.Mutex
	t0 := time.Now()
	sdone := make(chan struct{})
	go func() {
		defer close(sdone)
		last := uint64(0)
		tick := time.NewTicker(sample)
		defer tick.Stop()
		prev := time.Now()
		for !stop.Load() {
			<-tick.C
			tot := uint64(0)
			for i := range counts {
				tot += counts[i].n.Load()
			}
			now := time.Now()
			smu.Lock()
			samples = append(samples, float64(tot-last)/now.Sub(prev).Seconds())
			sampleT = append(sampleT, float64(now.Sub(t0))/1e6)
			smu.Unlock()
			last, prev = tot, now
		}
	}()

	runtime.LockOSThread()
	time.Sleep(before)
	c0, _ := counters(k)
	sums := make([]uint64, nw+maxWriters)
	tc := time.Now()
	res.StartMs = float64(tc.Sub(t0)) / 1e6
	var t1, t2, t3 time.Time
	switch mode {
	case "kapi":
		v, err := kapi.Snapshot(k, a.Mem)
		if err != nil {
			stop.Store(true)
			return err
		}
		t1 = time.Now()
		res.Method = v.Method
		if help {
			// Take copies off the writers' path: every page the OLAP
			// thread privatises here is one a writer finds copied. The
			// writers break pages in random order meanwhile; whoever
			// comes first copies. The time counts as the scan's.
			res.HelpCopy = true
			if err := kapi.PrepareWrite(k, a.Mem); err != nil {
				stop.Store(true)
				return err
			}
			res.HelpMs = float64(time.Since(t1)) / 1e6
		}
		scan(workload.Words8(v.Mem), per, nw, hdr, sums)
		t2 = time.Now()
		if err := kapi.ReleaseSnapshot(k, v); err != nil {
			return err
		}
		t3 = time.Now()
	case "fork":
		res.Method = "fork"
		var p [2]int
		if err := syscall.Pipe(p[:]); err != nil {
			return err
		}
		pid, err := forkScan(words, per, nw, hdr, sums, p[1])
		t1 = time.Now()
		if err != nil {
			return err
		}
		buf := make([]byte, len(sums)*8)
		got := 0
		for got < len(buf) {
			m, err := syscall.Read(p[0], buf[got:])
			if err != nil || m == 0 {
				return fmt.Errorf("fork child: read %d bytes: %v", got, err)
			}
			got += m
		}
		t2 = time.Now()
		copy(sums, unsafe.Slice((*uint64)(unsafe.Pointer(&buf[0])), len(sums)))
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
		t3 = time.Now()
		syscall.Close(p[0])
		syscall.Close(p[1])
	case "none":
		// The same OLAP job without a snapshot: the scan reads the live
		// area while the writers change it (its sums are not a
		// consistent cut and are not checked). OLTP during this scan is
		// the baseline that leaves the scan's own interference (memory
		// bandwidth, caches) in and takes only the snapshot's cost out.
		res.Method = "none"
		t1 = time.Now()
		scan(words, per, nw, hdr, sums)
		t2 = time.Now()
		t3 = t2
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	if c1, ok := counters(k); ok {
		d := delta(c1, c0)
		res.Counters = &d
	}
	time.Sleep(after)
	stop.Store(true)
	wg.Wait()
	<-sdone
	runtime.UnlockOSThread()

	res.CreateMs = float64(t1.Sub(tc)) / 1e6
	res.ScanMs = float64(t2.Sub(t1)) / 1e6
	res.DestroyMs = float64(t3.Sub(t2)) / 1e6
	res.Consistent = true
	for w := 0; w < nw; w++ {
		if mode == "none" {
			res.Checksum += sums[w]
			continue
		}
		d := sums[w] - sums[nw+w]
		if d != 0 && d != 1 {
			res.Consistent = false
		}
		res.Checksum += sums[w]
	}
	smu.Lock()
	res.Samples, res.SampleT = samples, sampleT
	smu.Unlock()
	s1 := res.StartMs + res.CreateMs
	s2 := s1 + res.ScanMs
	res.BeforeOps = mean(samples, sampleT, 0, res.StartMs)
	res.DuringOps = mean(samples, sampleT, s1, s2)
	res.AfterOps = mean(samples, sampleT, s2+res.DestroyMs, 1e18)
	j, _ := json.Marshal(res)
	fmt.Println(string(j))
	if !res.Consistent {
		return fmt.Errorf("snapshot not consistent: sums %v", sums)
	}
	return nil
}

// mean is the operations per second over the samples whose intervals
// overlap [lo, hi) ms, weighted by the overlap.
func mean(s, t []float64, lo, hi float64) float64 {
	ops, ms := 0.0, 0.0
	start := 0.0
	for i := range s {
		a, b := max(start, lo), min(t[i], hi)
		if b > a {
			ops += s[i] * (b - a)
			ms += b - a
		}
		start = t[i]
	}
	if ms == 0 {
		return 0
	}
	return ops / ms
}

// scan is the OLAP job: per-writer sums of the records, then the header.
func scan(w []uint64, per, nw, hdr int, sums []uint64) {
	for i := 0; i < nw; i++ {
		sums[i] = workload.Sum(w[i*per : (i+1)*per])
	}
	for i := 0; i < nw; i++ {
		sums[nw+i] = w[hdr+i]
	}
}

func counters(k kapi.Kernel) (unikernel.SnapshotCounters, bool) {
	if k.Name() != "unikernel" {
		return unikernel.SnapshotCounters{}, false
	}
	c, err := unikernel.SnapshotStats()
	return c, err == nil
}

func delta(a, b unikernel.SnapshotCounters) unikernel.SnapshotCounters {
	a.Shares -= b.Shares
	a.LiveWrites -= b.LiveWrites
	a.TableCopies -= b.TableCopies
	a.PageCopies -= b.PageCopies
	a.CopyBytes -= b.CopyBytes
	a.PageReuses -= b.PageReuses
	a.Flushes -= b.Flushes
	a.FramesFreed -= b.FramesFreed
	a.Faults -= b.Faults
	a.Breaks -= b.Breaks
	a.Created -= b.Created
	a.Released -= b.Released
	a.CreateNs -= b.CreateNs
	a.CreateFlushNs -= b.CreateFlushNs
	a.ReleaseNs -= b.ReleaseNs
	a.ReleaseFlushNs -= b.ReleaseFlushNs
	a.FaultNs -= b.FaultNs
	a.CopyNs -= b.CopyNs
	return a
}

// forkScan forks a child that scans the area (a copy-on-write copy of the
// parent's, HyPer's fork() snapshot) and writes its sums to fd. The child
// runs only code that needs no Go runtime service: loops and raw system
// calls (it has one thread and must not allocate or block in the
// scheduler).
func forkScan(words []uint64, per, nw, hdr int, sums []uint64, fd int) (int, error) {
	pid, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	if pid != 0 {
		return int(pid), nil
	}
	scan(words, per, nw, hdr, sums)
	b := unsafe.Slice((*byte)(unsafe.Pointer(&sums[0])), len(sums)*8)
	for len(b) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e != 0 {
			break
		}
		b = b[n:]
	}
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	return 0, nil
}
