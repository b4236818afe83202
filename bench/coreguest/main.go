// Command coreguest runs one micro-benchmark of kernel-entry costs, named
// by its first argument, and prints one JSON line {"name","ns_per_op","ops"}.
// The same binary runs as a Linux process and inside an image, so the two
// figures compare the same code (DESIGN §1.7).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cumulusdb/cumulus/kapi"
	_ "github.com/cumulusdb/cumulus/kapi/linux"
	"github.com/cumulusdb/cumulus/kapi/unikernel"
)

// framesAPI is the kernel's frame allocator: LLFree by kernel call in the
// image, mmap on Linux.
func framesAPI() kapi.Frames {
	k, err := kapi.Default()
	if err != nil {
		fail(err)
	}
	fr, err := kapi.AsFrames(k)
	if err != nil {
		fail(err)
	}
	return fr
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "coreguest:", err)
	os.Exit(1)
}

type result struct {
	Name     string  `json:"name"`
	NsPerOp  float64 `json:"ns_per_op"`
	Ops      int     `json:"ops"`
	FreeNsOp float64 `json:"free_ns_per_op,omitempty"`
}

var freePerOp float64

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: coreguest BENCH")
		os.Exit(2)
	}
	name := os.Args[1]
	var ops int
	var el time.Duration
	switch name {
	case "ready":
		fmt.Println(`{"name":"ready"}`)
		return
	case "getpid":
		ops = 200_000
		start := time.Now()
		for i := 0; i < ops; i++ {
			syscall.Getpid()
		}
		el = time.Since(start)
	case "time.Now":
		ops = 5_000_000
		start := time.Now()
		var last time.Time
		for i := 0; i < ops; i++ {
			last = time.Now()
		}
		el = last.Sub(start)
	case "chan-pingpong":
		ops = 200_000
		a, b := make(chan int), make(chan int)
		go func() {
			for v := range a {
				b <- v
			}
		}()
		start := time.Now()
		for i := 0; i < ops; i++ {
			a <- i
			<-b
		}
		el = time.Since(start)
		close(a)
	case "mutex-handoff":
		ops = 1_000_000
		var mu sync.Mutex
		var wg sync.WaitGroup
		n := 0
		start := time.Now()
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < ops/2; i++ {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		el = time.Since(start)
	case "sleep-1ms":
		ops = 200
		start := time.Now()
		for i := 0; i < ops; i++ {
			time.Sleep(time.Millisecond)
		}
		el = time.Since(start)
	case "goroutine-spawn":
		ops = 200_000
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < ops; i++ {
			wg.Add(1)
			go wg.Done()
		}
		wg.Wait()
		el = time.Since(start)
	case "compute":
		ops = 1 << 28
		x := uint64(1)
		start := time.Now()
		for i := 0; i < ops; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		el = time.Since(start)
		if x == 42 {
			fmt.Println()
		}
	case "compute-parallel":
		// The same total work as "compute", split over GOMAXPROCS
		// goroutines: run with 1 and then N vCPUs (GOMAXPROCS on Linux),
		// the ratio of the two is the SMP speed-up.
		ops = 1 << 29
		n := runtime.GOMAXPROCS(0)
		var wg sync.WaitGroup
		var sink atomic.Uint64
		start := time.Now()
		for g := 0; g < n; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				x := uint64(g + 1)
				for i := 0; i < ops/n; i++ {
					x = x*6364136223846793005 + 1442695040888963407
				}
				sink.Add(x)
			}(g)
		}
		wg.Wait()
		el = time.Since(start)
		if sink.Load() == 42 {
			fmt.Println()
		}
	case "presence", "presence-pagemap":
		// Residency checks on random pages of a 256 MiB range whose even
		// 2 MiB blocks are touched: kapi.Default().Memory().Resident (the
		// page-table walk in the image, mincore on Linux), or a pread of
		// /proc/self/pagemap per check (Linux only).
		k, err := kapi.Default()
		if err != nil {
			fail(err)
		}
		m := k.Memory()
		const size = 256 << 20
		r, err := m.Reserve(size, 2<<20)
		if err != nil {
			fail(err)
		}
		if err := m.Allocate(r, 0, size); err != nil {
			fail(err)
		}
		for off := 0; off < size; off += 4 << 20 {
			r.Mem[off] = 1
		}
		ops = 200_000
		offs := make([]uintptr, 1024)
		x := uint64(12345)
		for i := range offs {
			x = x*6364136223846793005 + 1442695040888963407
			offs[i] = uintptr(x>>20) % size &^ 4095
		}
		resident := 0
		start := time.Now()
		if name == "presence" {
			for i := 0; i < ops; i++ {
				if in, _ := m.Resident(r, offs[i&1023]); in {
					resident++
				}
			}
		} else {
			f, err := os.Open("/proc/self/pagemap")
			if err != nil {
				fail(err)
			}
			base := uintptr(unsafe.Pointer(&r.Mem[0]))
			var e [8]byte
			for i := 0; i < ops; i++ {
				if _, err := f.ReadAt(e[:], int64((base+offs[i&1023])/4096*8)); err != nil {
					fail(err)
				}
				if e[7]&0x80 != 0 {
					resident++
				}
			}
		}
		el = time.Since(start)
		if resident == 0 || resident == ops {
			fail(fmt.Errorf("implausible residency: %d of %d", resident, ops))
		}
	case "kernel-call":
		// The cheapest way into the kernel: a kernel call in the image,
		// a system call (getpid) on Linux.
		ops = 2_000_000
		inImage := unikernel.Probe()
		start := time.Now()
		for i := 0; i < ops; i++ {
			if inImage {
				unikernel.KernelCallNop()
			} else {
				syscall.Getpid()
			}
		}
		el = time.Since(start)
	case "frames-bulk-1", "frames-bulk-2", "frames-bulk-4":
		// The second talk's bulk benchmark through kapi: each thread
		// allocates N 4 KiB frames, then frees them. In the image: LLFree
		// by kernel call; on Linux: mmap+populate+munmap per frame (N/4 per
		// thread there, as Linux caps a process's mappings).
		threads := int(name[len(name)-1] - '0')
		fr := framesAPI()
		per := 200_000
		if !unikernel.Probe() {
			per /= 4
		}
		var wg sync.WaitGroup
		var allocNs, freeNs atomic.Int64
		for g := 0; g < threads; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				held := make([][]byte, per)
				t0 := time.Now()
				for i := range held {
					b, err := fr.FramesAlloc(0)
					if err != nil {
						fail(err)
					}
					held[i] = b
				}
				t1 := time.Now()
				for _, b := range held {
					if err := fr.FramesFree(b, 0); err != nil {
						fail(err)
					}
				}
				allocNs.Add(int64(t1.Sub(t0)))
				freeNs.Add(int64(time.Since(t1)))
			}()
		}
		wg.Wait()
		ops = per * threads
		el = time.Duration(allocNs.Load() / int64(threads))
		freePerOp = float64(freeNs.Load()) / float64(ops)
		ops /= threads // ns per operation per thread
	case "frames-random-2", "frames-random-4":
		// Random free: each thread allocates its frames, then frees the
		// frames of the next thread in random order (the talk's
		// "random free", 40,000 per thread; 10,000 on Linux).
		threads := int(name[len(name)-1] - '0')
		fr := framesAPI()
		per := 40_000
		if !unikernel.Probe() {
			per /= 4
		}
		held := make([][][]byte, threads)
		var wg sync.WaitGroup
		var allocNs, freeNs atomic.Int64
		for g := 0; g < threads; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				t0 := time.Now()
				h := make([][]byte, per)
				for i := range h {
					b, err := fr.FramesAlloc(0)
					if err != nil {
						fail(err)
					}
					h[i] = b
				}
				allocNs.Add(int64(time.Since(t0)))
				held[g] = h
			}()
		}
		wg.Wait()
		for g := 0; g < threads; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				h := held[(g+1)%threads]
				x := uint64(g + 1)
				for i := len(h) - 1; i > 0; i-- { // Fisher–Yates with an LCG
					x = x*6364136223846793005 + 1442695040888963407
					j := int(x>>33) % (i + 1)
					h[i], h[j] = h[j], h[i]
				}
				t0 := time.Now()
				for _, b := range h {
					if err := fr.FramesFree(b, 0); err != nil {
						fail(err)
					}
				}
				freeNs.Add(int64(time.Since(t0)))
			}()
		}
		wg.Wait()
		ops = per * threads
		el = time.Duration(allocNs.Load() / int64(threads))
		freePerOp = float64(freeNs.Load()) / float64(ops)
		ops /= threads
	case "frames-pipeline":
		// Pipeline: one thread allocates, another frees what it receives.
		fr := framesAPI()
		ops = 200_000
		if !unikernel.Probe() {
			ops /= 4
		}
		ch := make(chan []byte, 1024)
		done := make(chan struct{})
		start := time.Now()
		go func() {
			runtime.LockOSThread()
			for b := range ch {
				if err := fr.FramesFree(b, 0); err != nil {
					fail(err)
				}
			}
			close(done)
		}()
		runtime.LockOSThread()
		for i := 0; i < ops; i++ {
			b, err := fr.FramesAlloc(0)
			if err != nil {
				fail(err)
			}
			ch <- b
		}
		close(ch)
		<-done
		el = time.Since(start)
	case "alloc-gc":
		ops = 2_000_000
		var keep [64][]byte
		start := time.Now()
		for i := 0; i < ops; i++ {
			keep[i%64] = make([]byte, 512)
		}
		el = time.Since(start)
		runtime.KeepAlive(keep)
	default:
		fmt.Fprintf(os.Stderr, "unknown benchmark %q\n", name)
		os.Exit(2)
	}
	b, _ := json.Marshal(result{Name: name, NsPerOp: float64(el.Nanoseconds()) / float64(ops), Ops: ops, FreeNsOp: freePerOp})
	fmt.Println(string(b))
}
