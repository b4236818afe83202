// Package alloc is the frame-allocation benchmark of the second talk
// (DESIGN §5 "alloc"), Linux side: the kernel's LLFree allocator
// (kernel/mm/llfree, run here as a plain library over a metadata slice)
// against Linux mmap+touch+munmap of 4 KiB and the Go heap
// (make([]byte, 4096), then dropped). The kernel engineer adds the
// in-image side by calling Run from `cumulus bench alloc` and merging
// reports.
//
// Workloads, per thread count (a thread count above the CPU count is
// labelled "overcommitted"):
//   - bulk: each thread allocates Bulk 4 KiB frames, then frees them all;
//   - random: each thread allocates Random frames; then all frames are
//     shuffled and each thread frees its share, mostly frames that other
//     threads allocated;
//   - pipeline: threads form producer/consumer pairs; the producer
//     allocates Pipeline frames and passes each through a lock-free ring
//     to the consumer, which frees it (thread counts ≥ 2 only).
//
// Reported: ns per allocation and per free, averaged over the threads of
// the phase (each thread's phase time divided by its operations). Times
// include a dynamic call per operation through the allocator interface,
// the same for every allocator. The Go heap's "free" only drops a
// reference: its real cost (GC) lands in the allocations.
//
// This is benchmark code running as a Linux process: it allocates freely.
// Each worker locks its OS thread and uses its own cpu index, as the
// kernel guarantees for the allocator.
package alloc

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/mm/llfree"
)

// Options selects what Run measures. Zero fields take defaults.
type Options struct {
	Threads    []int    // default 1, 2, 4
	Bulk       int      // frames per thread, default 200,000
	Random     int      // frames per thread, default 40,000
	Pipeline   int      // frames per producer, default 200,000
	Allocators []string // subset of "llfree", "mmap", "goheap"; default all
	Reps       int      // llfree repetitions, best (lowest) kept; default 3 (baselines run once)
	// BaselineDiv divides the frame counts for mmap and goheap (default
	// 4; 1 = the same sizes as llfree). Page faults cost ~8 µs on these
	// nested-virtualisation hosts, so full-size baselines alone take
	// minutes; per-operation figures change little with the count.
	BaselineDiv int
	Env         string // label of where it ran, default "linux"
}

func (o *Options) defaults() {
	if len(o.Threads) == 0 {
		o.Threads = []int{1, 2, 4}
	}
	if o.Bulk == 0 {
		o.Bulk = 200_000
	}
	if o.Random == 0 {
		o.Random = 40_000
	}
	if o.Pipeline == 0 {
		o.Pipeline = 200_000
	}
	if len(o.Allocators) == 0 {
		o.Allocators = []string{"llfree", "mmap", "goheap"}
	}
	if o.Reps == 0 {
		o.Reps = 3
	}
	if o.BaselineDiv == 0 {
		o.BaselineDiv = 4
	}
	if o.Env == "" {
		o.Env = "linux"
	}
}

// Result is one (allocator, workload, thread count) measurement.
type Result struct {
	Env           string  `json:"env"`
	Allocator     string  `json:"allocator"`
	Workload      string  `json:"workload"`
	Threads       int     `json:"threads"`
	Overcommitted bool    `json:"overcommitted"`
	OpsPerThread  int     `json:"ops_per_thread"`
	AllocNs       float64 `json:"alloc_ns"`
	FreeNs        float64 `json:"free_ns"`
}

// Report is the outcome of Run.
type Report struct {
	Options   Options           `json:"options"`
	CPUs      int               `json:"cpus"`
	GoVersion string            `json:"go_version"`
	Started   time.Time         `json:"started"`
	Results   []Result          `json:"results"`
	Reference map[string]string `json:"reference"`
}

// reference figures quoted by the talk (LLFree, ATC'23, in a Linux kernel).
var reference = map[string]string{
	"llfree (8 threads, Linux kernel)":      "42-44 ns/alloc, 47 ns/free",
	"linux buddy (8 threads, Linux kernel)": "149-153 ns/alloc, 176-179 ns/free",
}

// allocator is one contender. Handles live in slots owned by the
// allocator; slot i is written by its allocating thread and read by its
// freeing thread, ordered by the phase barrier or the pipeline ring.
type allocator interface {
	prepare(cpus, slots int) error
	alloc(cpu, slot int) error
	free(cpu, slot int) error
}

func newAllocator(name string) (allocator, error) {
	switch name {
	case "llfree":
		return &llfreeAlloc{}, nil
	case "mmap":
		return &mmapAlloc{}, nil
	case "goheap":
		return &goHeap{}, nil
	}
	return nil, fmt.Errorf("alloc: unknown allocator %q", name)
}

// Run measures every selected allocator, workload and thread count.
func Run(opts Options) (*Report, error) {
	opts.defaults()
	rep := &Report{Options: opts, CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Started: time.Now(), Reference: reference}
	for _, name := range opts.Allocators {
		for _, wl := range []string{"bulk", "random", "pipeline"} {
			for _, t := range opts.Threads {
				if wl == "pipeline" && t < 2 {
					continue // needs a producer and a consumer
				}
				r, err := measure(name, wl, t, opts)
				if err != nil {
					return nil, err
				}
				rep.Results = append(rep.Results, r)
			}
		}
	}
	return rep, nil
}

func measure(name, wl string, threads int, o Options) (Result, error) {
	r := Result{Env: o.Env, Allocator: name, Workload: wl, Threads: threads,
		Overcommitted: threads > runtime.NumCPU()}
	reps := o.Reps
	if name != "llfree" {
		reps = 1 // µs-scale baselines: one run is plenty
	}
	for rep := 0; rep < reps; rep++ {
		a, err := newAllocator(name)
		if err != nil {
			return r, err
		}
		var an, fn float64
		if name != "llfree" && o.BaselineDiv > 1 {
			o.Bulk = max(1, o.Bulk/o.BaselineDiv)
			o.Random = max(1, o.Random/o.BaselineDiv)
			o.Pipeline = max(1, o.Pipeline/o.BaselineDiv)
			o.BaselineDiv = 1
		}
		switch wl {
		case "bulk":
			r.OpsPerThread = o.Bulk
			an, fn, err = bulk(a, threads, o.Bulk)
		case "random":
			r.OpsPerThread = o.Random
			an, fn, err = random(a, threads, o.Random)
		case "pipeline":
			r.OpsPerThread = o.Pipeline
			an, fn, err = pipeline(a, threads, o.Pipeline)
		}
		if err != nil {
			return r, fmt.Errorf("alloc: %s %s %d threads: %w", name, wl, threads, err)
		}
		if rep == 0 || an < r.AllocNs {
			r.AllocNs = an
		}
		if rep == 0 || fn < r.FreeNs {
			r.FreeNs = fn
		}
		runtime.GC() // keep one run's garbage out of the next
	}
	return r, nil
}

// phase runs body on n locked OS threads and returns the mean over threads
// of each thread's elapsed time divided by ops, in ns.
func phase(n, ops int, body func(t int) error) (float64, error) {
	var wg sync.WaitGroup
	var start sync.WaitGroup
	start.Add(1)
	times := make([]time.Duration, n)
	errs := make([]error, n)
	for t := 0; t < n; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			start.Wait()
			t0 := time.Now()
			errs[t] = body(t)
			times[t] = time.Since(t0)
		}(t)
	}
	start.Done()
	wg.Wait()
	var sum float64
	for t := 0; t < n; t++ {
		if errs[t] != nil {
			return 0, errs[t]
		}
		sum += float64(times[t].Nanoseconds()) / float64(ops)
	}
	return sum / float64(n), nil
}

func bulk(a allocator, threads, n int) (float64, float64, error) {
	if err := a.prepare(threads, threads*n); err != nil {
		return 0, 0, err
	}
	an, err := phase(threads, n, func(t int) error {
		for i := t * n; i < (t+1)*n; i++ {
			if err := a.alloc(t, i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	fn, err := phase(threads, n, func(t int) error {
		for i := t * n; i < (t+1)*n; i++ {
			if err := a.free(t, i); err != nil {
				return err
			}
		}
		return nil
	})
	return an, fn, err
}

func random(a allocator, threads, n int) (float64, float64, error) {
	if err := a.prepare(threads, threads*n); err != nil {
		return 0, 0, err
	}
	an, err := phase(threads, n, func(t int) error {
		for i := t * n; i < (t+1)*n; i++ {
			if err := a.alloc(t, i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	perm := rand.New(rand.NewPCG(42, uint64(threads))).Perm(threads * n)
	fn, err := phase(threads, n, func(t int) error {
		for _, slot := range perm[t*n : (t+1)*n] {
			if err := a.free(t, slot); err != nil {
				return err
			}
		}
		return nil
	})
	return an, fn, err
}

// ring is a single-producer single-consumer queue of slot numbers.
type ring struct {
	buf        [1024]int32
	head, tail atomic.Uint64 // consumer reads at head, producer writes at tail
}

func (r *ring) push(v int32) {
	t := r.tail.Load()
	for t-r.head.Load() == uint64(len(r.buf)) {
		runtime.Gosched()
	}
	r.buf[t%uint64(len(r.buf))] = v
	r.tail.Store(t + 1)
}

func (r *ring) pop() int32 {
	h := r.head.Load()
	for r.tail.Load() == h {
		runtime.Gosched()
	}
	v := r.buf[h%uint64(len(r.buf))]
	r.head.Store(h + 1)
	return v
}

// pipeline: threads/2 pairs; even thread t produces for odd thread t+1.
func pipeline(a allocator, threads, n int) (float64, float64, error) {
	pairs := threads / 2
	if err := a.prepare(threads, pairs*n); err != nil {
		return 0, 0, err
	}
	rings := make([]ring, pairs)
	var allocNs, freeNs atomic.Uint64 // sums of per-thread ns/op, ×1000
	_, err := phase(2*pairs, n, func(t int) error {
		p := t / 2
		t0 := time.Now()
		if t%2 == 0 {
			for i := p * n; i < (p+1)*n; i++ {
				if err := a.alloc(t, i); err != nil {
					rings[p].push(-1)
					return err
				}
				rings[p].push(int32(i))
			}
			allocNs.Add(uint64(time.Since(t0).Nanoseconds() * 1000 / int64(n)))
			return nil
		}
		for k := 0; k < n; k++ {
			slot := rings[p].pop()
			if slot < 0 {
				return nil
			}
			if err := a.free(t, int(slot)); err != nil {
				return err
			}
		}
		freeNs.Add(uint64(time.Since(t0).Nanoseconds() * 1000 / int64(n)))
		return nil
	})
	return float64(allocNs.Load()) / 1000 / float64(pairs), float64(freeNs.Load()) / 1000 / float64(pairs), err
}

// ---- contenders ---------------------------------------------------------

type llfreeAlloc struct {
	a     llfree.Allocator
	meta  []byte
	slots []uint64
}

func (l *llfreeAlloc) prepare(cpus, slots int) error {
	// Room for every slot plus 10% and two trees per CPU of slack, so
	// reservations never starve the benchmark.
	frames := uint64(slots) + uint64(slots)/10 + uint64(cpus)*2*16384
	l.meta = make([]byte, llfree.MetaSize(frames, cpus))
	l.slots = make([]uint64, slots)
	if err := l.a.Init(l.meta, frames, cpus); err != nil {
		return err
	}
	// Warm up untimed: in the kernel the metadata is touched at boot;
	// here the first touch of each fresh page of the slice would cost a
	// page fault (~8 µs on these hosts) and be charged to the allocator.
	for i := range l.slots {
		if err := l.alloc(0, i); err != nil {
			return err
		}
	}
	for i := range l.slots {
		if err := l.free(0, i); err != nil {
			return err
		}
	}
	return nil
}

func (l *llfreeAlloc) alloc(cpu, slot int) error {
	f, err := l.a.Get(cpu, 0)
	l.slots[slot] = f
	return err
}

func (l *llfreeAlloc) free(cpu, slot int) error { return l.a.Put(cpu, l.slots[slot], 0) }

type mmapAlloc struct{ slots []uintptr }

func (m *mmapAlloc) prepare(cpus, slots int) error {
	m.slots = make([]uintptr, slots)
	for i := range m.slots {
		m.slots[i] = 1 // fault the slot array in, untimed
	}
	return nil
}

func (m *mmapAlloc) alloc(cpu, slot int) error {
	// Raw system calls: x/sys/unix.Mmap keeps a locked map of mappings,
	// which would serialise the threads on a Go mutex.
	addr, _, e := syscall.Syscall6(syscall.SYS_MMAP, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS, ^uintptr(0), 0)
	if e != 0 {
		return e
	}
	*(*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))) = 1 // touch: fault the page in
	m.slots[slot] = addr
	return nil
}

func (m *mmapAlloc) free(cpu, slot int) error {
	if _, _, e := syscall.Syscall(syscall.SYS_MUNMAP, m.slots[slot], 4096, 0); e != 0 {
		return e
	}
	return nil
}

type goHeap struct{ slots [][]byte }

func (g *goHeap) prepare(cpus, slots int) error {
	g.slots = make([][]byte, slots)
	for i := range g.slots {
		g.slots[i] = []byte{} // fault the slot array in, untimed
	}
	return nil
}

func (g *goHeap) alloc(cpu, slot int) error {
	b := make([]byte, 4096)
	b[0] = 1
	g.slots[slot] = b
	return nil
}

func (g *goHeap) free(cpu, slot int) error {
	g.slots[slot] = nil
	return nil
}

// ---- output ---------------------------------------------------------------

// Label is the thread-count label used in tables and plots.
func (r Result) Label() string {
	if r.Overcommitted {
		return fmt.Sprintf("%d (overcommitted)", r.Threads)
	}
	return fmt.Sprint(r.Threads)
}

// Table renders the results as a fixed-width text table.
func (rep *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "alloc benchmark: %d CPUs, %s; bulk %d, random %d, pipeline %d frames per thread\n",
		rep.CPUs, rep.GoVersion, rep.Options.Bulk, rep.Options.Random, rep.Options.Pipeline)
	fmt.Fprintf(&b, "(mmap and goheap run 1/%d of those counts; see ops/thread)\n", rep.Options.BaselineDiv)
	fmt.Fprintf(&b, "%-8s %-9s %-8s %-20s %10s %12s %12s\n", "env", "workload", "alloc'r", "threads", "ops/thread", "ns/alloc", "ns/free")
	rs := append([]Result(nil), rep.Results...)
	order := map[string]int{"bulk": 0, "random": 1, "pipeline": 2}
	sort.SliceStable(rs, func(i, j int) bool {
		if rs[i].Workload != rs[j].Workload {
			return order[rs[i].Workload] < order[rs[j].Workload]
		}
		return rs[i].Threads < rs[j].Threads
	})
	for _, r := range rs {
		fmt.Fprintf(&b, "%-8s %-9s %-8s %-20s %10d %12.1f %12.1f\n", r.Env, r.Workload, r.Allocator, r.Label(), r.OpsPerThread, r.AllocNs, r.FreeNs)
	}
	keys := make([]string, 0, len(rep.Reference))
	for k := range rep.Reference {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "reference: %s: %s\n", k, rep.Reference[k])
	}
	return b.String()
}

// JSON renders the report.
func (rep *Report) JSON() ([]byte, error) { return json.MarshalIndent(rep, "", "  ") }

// WriteJSON writes the report to path.
func (rep *Report) WriteJSON(path string) error {
	b, err := rep.JSON()
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
