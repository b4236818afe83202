// Command guest exercises the Go runtime inside an image: each argument
// names a check; it prints "ok NAME" per check and exits non-zero on the
// first failure. The vmm tests boot it.
package main

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/unikernel"
)

func main() {
	for _, a := range os.Args[1:] {
		name, arg, _ := strings.Cut(a, "=")
		if err := run(name, arg); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Println("ok", name)
	}
}

func run(name, arg string) error {
	switch name {
	case "args":
		if arg != strings.Join(os.Args[1:], ",") && arg != "" {
			return fmt.Errorf("args %q", os.Args)
		}
		if os.Getenv("CUMULUS_TEST_ENV") != "yes" {
			return fmt.Errorf("environment not passed: %q", os.Getenv("CUMULUS_TEST_ENV"))
		}
	case "goroutines":
		var wg sync.WaitGroup
		ch := make(chan int)
		var sum atomic.Int64
		for i := 0; i < 1000; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for v := range ch {
					sum.Add(int64(v))
				}
			}()
		}
		for i := 1; i <= 100000; i++ {
			ch <- i
		}
		close(ch)
		wg.Wait()
		if sum.Load() != 100000*100001/2 {
			return fmt.Errorf("sum %d", sum.Load())
		}
	case "timers":
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(i%10) * time.Millisecond)
			}()
		}
		wg.Wait()
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("timer did not fire")
		}
		if el := time.Since(start); el < 20*time.Millisecond || el > 5*time.Second {
			return fmt.Errorf("elapsed %v", el)
		}
		tk := time.NewTicker(time.Millisecond)
		for i := 0; i < 10; i++ {
			<-tk.C
		}
		tk.Stop()
	case "gc":
		// Allocate 3 GiB in total (more than the guest's RAM) while keeping
		// a small live set that must survive intact.
		keep := make([][]byte, 64)
		for i := 0; i < 3<<30>>20; i++ {
			b := make([]byte, 1<<20)
			b[0], b[len(b)-1] = byte(i), byte(i>>8)
			keep[i%64] = b
		}
		for _, b := range keep {
			if b == nil || len(b) != 1<<20 {
				return fmt.Errorf("live data lost")
			}
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.NumGC == 0 {
			return fmt.Errorf("no GC ran")
		}
		debug.FreeOSMemory()
		m := map[int]string{}
		for i := 0; i < 200000; i++ {
			m[i] = strconv.Itoa(i)
		}
		for i := 0; i < 200000; i += 997 {
			if m[i] != strconv.Itoa(i) {
				return fmt.Errorf("map corrupted at %d", i)
			}
		}
	case "mutex":
		var mu sync.Mutex
		n := 0
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 100000; i++ {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if n != 800000 {
			return fmt.Errorf("n=%d", n)
		}
	case "panic":
		got := func() (r any) {
			defer func() { r = recover() }()
			var s []int
			_ = s[len(os.Args)+5]
			return nil
		}()
		if got == nil || !strings.Contains(fmt.Sprint(got), "index out of range") {
			return fmt.Errorf("recover got %v", got)
		}
	case "stdlib":
		x := new(big.Int).Exp(big.NewInt(3), big.NewInt(1000), nil)
		if len(x.String()) != 478 {
			return fmt.Errorf("big: %d digits", len(x.String()))
		}
		b, _ := json.Marshal(map[string][]int{"a": {3, 1, 2}})
		var v map[string][]int
		json.Unmarshal(b, &v)
		sort.Ints(v["a"])
		if fmt.Sprint(v) != "map[a:[1 2 3]]" {
			return fmt.Errorf("json/sort: %v", v)
		}
	case "compute":
		// Work split over GOMAXPROCS goroutines; prints its duration.
		n, _ := strconv.Atoi(arg)
		if n == 0 {
			n = 400_000_000
		}
		p := runtime.GOMAXPROCS(0)
		start := time.Now()
		var wg sync.WaitGroup
		res := make([]uint64, p)
		for g := 0; g < p; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				x := uint64(g + 1)
				for i := 0; i < n/p; i++ {
					x = x*6364136223846793005 + 1442695040888963407
				}
				res[g] = x
			}()
		}
		wg.Wait()
		fmt.Printf("compute procs=%d seconds=%.4f\n", p, time.Since(start).Seconds())
	case "files":
		// Host shares: /tmp writable, /ro read-only with hello.txt in it,
		// working directory /ro.
		dir, err := os.MkdirTemp("", "guest-")
		if err != nil {
			return err
		}
		f := dir + "/a.txt"
		if err := os.WriteFile(f, []byte("written in the guest"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(f, dir+"/b.txt"); err != nil {
			return err
		}
		b, err := os.ReadFile(dir + "/b.txt")
		if err != nil || string(b) != "written in the guest" {
			return fmt.Errorf("read back %q %v", b, err)
		}
		ents, err := os.ReadDir(dir)
		if err != nil || len(ents) != 1 || ents[0].Name() != "b.txt" {
			return fmt.Errorf("readdir %v %v", ents, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			return fmt.Errorf("removed dir still there: %v", err)
		}
		wd, _ := os.Getwd()
		hello, err := os.ReadFile("hello.txt") // relative to the working directory
		if err != nil || string(hello) != "hello from the host\n" || wd != "/ro" {
			return fmt.Errorf("ro share: %q %v (wd %q)", hello, err, wd)
		}
		if err := os.WriteFile("/ro/new.txt", nil, 0o644); err == nil || !strings.Contains(err.Error(), "read-only") {
			return fmt.Errorf("write to a read-only share: %v", err)
		}
		if _, err := os.ReadFile("/etc/passwd"); err == nil {
			return fmt.Errorf("a path outside every share was readable")
		}
		if _, err := os.ReadFile("/ro/../../etc/passwd"); err == nil {
			return fmt.Errorf("a path escaping the share was readable")
		}
		// Built-in /etc/hosts: "localhost" resolves without DNS.
		if hosts, err := os.ReadFile("/etc/hosts"); err != nil || !strings.Contains(string(hosts), "127.0.0.1\tlocalhost") {
			return fmt.Errorf("built-in /etc/hosts: %q %v", hosts, err)
		}
		if addrs, err := net.LookupHost("localhost"); err != nil || len(addrs) == 0 {
			return fmt.Errorf("lookup localhost: %v %v", addrs, err)
		}
		if err := os.WriteFile("/etc/hosts", nil, 0o644); err == nil {
			return fmt.Errorf("the built-in /etc/hosts was writable")
		}
		n, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		fmt.Fprintln(n, "discarded")
		n.Close()
	case "faults":
		// As on Linux: the CPU's exceptions become recoverable panics.
		catch := func(f func()) (msg string) {
			defer func() { msg = fmt.Sprint(recover()) }()
			f()
			return "no panic"
		}
		var p *struct{ a, b int }
		if m := catch(func() { p.b = 1 }); !strings.Contains(m, "nil pointer dereference") {
			return fmt.Errorf("nil: %s", m)
		}
		zero := len(os.Args) - len(os.Args)
		if m := catch(func() { fmt.Println(10 / zero) }); !strings.Contains(m, "divide by zero") {
			return fmt.Errorf("divide: %s", m)
		}
		old := debug.SetPanicOnFault(true)
		// Above the kernel's mmap limit (0x7fff00000000) and below its pipe
		// buffers: never mapped, whatever the runtime has allocated.
		wild := (*int)(unsafe.Pointer(uintptr(0x7fff80001000)))
		var addr uintptr
		func() {
			defer func() {
				if e, ok := recover().(interface{ Addr() uintptr }); ok {
					addr = e.Addr()
				}
			}()
			fmt.Println(*wild)
		}()
		debug.SetPanicOnFault(old)
		if addr != 0x7fff80001000 {
			return fmt.Errorf("wild pointer: fault address %#x", addr)
		}
	case "preempt":
		// A goroutine spinning without calls must be preempted (SIGURG)
		// for the GC to stop the world, even on one vCPU.
		var stop atomic.Bool
		go func() {
			x := 0
			for !stop.Load() {
				x++
			}
		}()
		time.Sleep(20 * time.Millisecond)
		runtime.GC()
		stop.Store(true)
	case "kapi":
		k, err := kapi.Default()
		if err != nil || k.Name() != "unikernel" {
			return fmt.Errorf("kapi.Default: %v %v", k, err)
		}
		m := k.Memory()
		r, err := m.Reserve(64<<20, 2<<20)
		if err != nil {
			return err
		}
		if err := m.Allocate(r, 0, 64<<20); err != nil {
			return err
		}
		if in, _ := m.Resident(r, 40<<20); in {
			return fmt.Errorf("untouched page reported resident")
		}
		r.Mem[40<<20] = 7
		if in, _ := m.Resident(r, 40<<20); !in {
			return fmt.Errorf("touched page reported not resident")
		}
		out := make([]bool, 1024)
		if err := m.ResidentBatch(r, 0, out); err != nil || out[0] {
			return fmt.Errorf("batch: %v %v", out[0], err)
		}
		if err := m.Discard(r, 40<<20, 4096); err != nil || r.Mem[40<<20] != 0 {
			return fmt.Errorf("discard: %v, byte %d", err, r.Mem[40<<20])
		}
		// A large discard makes the pages read as zero; with -reclaim it
		// also returns their frames (after a TLB shootdown).
		for off := 8 << 20; off < 16<<20; off += 4096 {
			r.Mem[off] = 9
		}
		free0 := func() uint64 { st, _ := m.Stats(); return st.Available }
		before := free0()
		if err := m.Discard(r, 8<<20, 8<<20); err != nil {
			return err
		}
		if arg == "reclaim" {
			if in, _ := m.Resident(r, 12<<20); in {
				return fmt.Errorf("discarded page still resident")
			}
			if after := free0(); after < before+6<<20 {
				return fmt.Errorf("discarding 8 MiB freed only %d bytes", int64(after)-int64(before))
			}
		}
		for off := 8 << 20; off < 16<<20; off += 4096 {
			if r.Mem[off] != 0 {
				return fmt.Errorf("discarded page at %d reads %d", off, r.Mem[off])
			}
		}
		r.Mem[12<<20] = 5
		if in, _ := m.Resident(r, 12<<20); !in || r.Mem[12<<20] != 5 {
			return fmt.Errorf("page not usable after discard")
		}
		tlb, err := kapi.AsTLB(k)
		if err != nil {
			return err
		}
		// Concurrent shootdowns from every vCPU must not wait on each
		// other.
		var fwg sync.WaitGroup
		ferr := make(chan error, 8)
		for g := 0; g < 4; g++ {
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				runtime.LockOSThread()
				for i := 0; i < 20; i++ {
					if err := tlb.FlushTLB(); err != nil {
						ferr <- err
						return
					}
				}
			}()
		}
		fwg.Wait()
		close(ferr)
		for err := range ferr {
			return err
		}
		st, err := m.Stats()
		if err != nil || st.Total == 0 || st.Available > st.Total {
			return fmt.Errorf("stats %+v %v", st, err)
		}
		if err := m.Free(r); err != nil {
			return err
		}
	case "frames":
		k, _ := kapi.Default()
		fr, err := kapi.AsFrames(k)
		if err != nil {
			return err
		}
		before := fr.FreePhysMem()
		b, err := fr.FramesAlloc(9)
		if err != nil {
			return err
		}
		if uintptr(unsafe.Pointer(&b[0]))%(2<<20) != 0 || len(b) != 2<<20 {
			return fmt.Errorf("2 MiB frame at %p, %d bytes", &b[0], len(b))
		}
		b[len(b)-1] = 1
		if err := fr.FramesFree(b, 9); err != nil {
			return err
		}
		if err := fr.FramesFree(b, 9); err == nil {
			return fmt.Errorf("double free of a 2 MiB frame accepted")
		}
		// Stress: every vCPU allocates and frees concurrently; each frame
		// is stamped and checked, so a frame handed out twice is caught.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				// Pin each thread to one vCPU, round robin, and check it.
				cpu := g % runtime.NumCPU()
				var set unix.CPUSet
				set.Set(cpu)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					errs <- err
					return
				}
				if on := unikernel.CPU(); on != cpu {
					errs <- fmt.Errorf("thread pinned to vCPU %d runs on %d", cpu, on)
					return
				}
				held := make([][]byte, 0, 5000)
				for round := 0; round < 4; round++ {
					if on := unikernel.CPU(); on != cpu {
						errs <- fmt.Errorf("thread pinned to vCPU %d migrated to %d", cpu, on)
						return
					}
					for i := 0; i < 5000; i++ {
						f, err := fr.FramesAlloc(0)
						if err != nil {
							errs <- err
							return
						}
						tag := uint64(g)<<32 | uint64(round)<<24 | uint64(i)
						*(*uint64)(unsafe.Pointer(&f[0])) = tag
						*(*uint64)(unsafe.Pointer(&f[4088])) = tag
						held = append(held, f)
					}
					for i, f := range held {
						tag := uint64(g)<<32 | uint64(round)<<24 | uint64(i)
						if *(*uint64)(unsafe.Pointer(&f[0])) != tag || *(*uint64)(unsafe.Pointer(&f[4088])) != tag {
							errs <- fmt.Errorf("frame %p shared between owners", &f[0])
							return
						}
						if err := fr.FramesFree(f, 0); err != nil {
							errs <- err
							return
						}
					}
					held = held[:0]
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			return err
		}
		// Every kapi frame went back. The Go runtime's own heap shares the
		// pool and may grow by a few 2 MiB blocks meanwhile (goroutine
		// stacks, the held slices), hence the slack.
		if after := fr.FreePhysMem(); after+8<<20 < before {
			return fmt.Errorf("free memory %d before, %d after: frames leaked", before, after)
		}
	case "tlb":
		// Run with -reclaim on 2 vCPUs. A reader on one vCPU keeps the
		// translation of page P hot; another vCPU discards P's range
		// (unmap, shootdown, free), takes frames until the old one comes
		// back, and stamps them. A reader still reaching P's old frame
		// through a stale TLB entry would see the stamp.
		k, _ := kapi.Default()
		m := k.Memory()
		fr, _ := kapi.AsFrames(k)
		const size = 4 << 20
		for round := 0; round < 20; round++ {
			r, err := m.Reserve(size, 2<<20)
			if err != nil {
				return err
			}
			m.Allocate(r, 0, size)
			for off := 0; off < size; off += 4096 {
				r.Mem[off] = 1
			}
			p := (*uint64)(unsafe.Pointer(&r.Mem[size/2]))
			var stop, bad atomic.Bool
			var reads atomic.Int64
			ready, exited := make(chan struct{}), make(chan struct{})
			go func() {
				runtime.LockOSThread()
				defer close(exited)
				close(ready)
				for !stop.Load() {
					if v := atomic.LoadUint64(p); v == 0xdeadbeefcafe {
						bad.Store(true)
					}
					reads.Add(1)
				}
			}()
			<-ready
			for reads.Load() < 1000 {
				runtime.Gosched()
			}
			if err := m.Discard(r, 0, size); err != nil {
				return err
			}
			var got [][]byte
			for i := 0; i < 4096; i++ {
				b, err := fr.FramesAlloc(0)
				if err != nil {
					break
				}
				*(*uint64)(unsafe.Pointer(&b[size/2%4096])) = 0xdeadbeefcafe
				got = append(got, b)
			}
			time.Sleep(2 * time.Millisecond)
			stop.Store(true)
			<-exited // the range is freed below: the reader must be gone
			for _, b := range got {
				fr.FramesFree(b, 0)
			}
			if bad.Load() {
				return fmt.Errorf("round %d: a stale TLB entry reached a freed frame", round)
			}
			m.Free(r)
		}
	case "threadexit":
		// Threads exit (goroutines that end locked to their thread take
		// it with them) while other goroutines grow and shrink stacks: an
		// exiting thread must not write to its stack once it has handed it
		// back (runtime.exitThread).
		var depth func(n int) int
		depth = func(n int) int {
			var pad [64]byte
			pad[n%64] = byte(n)
			if n == 0 {
				return int(pad[0])
			}
			return depth(n-1) + int(pad[n%64]&1)
		}
		for round := 0; round < 40; round++ {
			var wg sync.WaitGroup
			for g := 0; g < 6; g++ {
				wg.Add(2)
				go func() {
					defer wg.Done()
					runtime.LockOSThread() // never unlocked: the thread exits
					_ = depth(50)
				}()
				go func() {
					defer wg.Done()
					for k := 0; k < 20; k++ {
						want := 0
						for i := 1; i <= 300; i++ {
							want += i & 1
						}
						if got := depth(300); got != want {
							panic(fmt.Sprintf("stack corrupted: depth(300) = %d, want %d", got, want))
						}
					}
				}()
			}
			wg.Wait()
			runtime.GC()
		}
	case "procs":
		if want, _ := strconv.Atoi(arg); runtime.GOMAXPROCS(0) != want || runtime.NumCPU() != want {
			return fmt.Errorf("GOMAXPROCS=%d NumCPU=%d, want %d", runtime.GOMAXPROCS(0), runtime.NumCPU(), want)
		}
	case "spin":
		// Never returns: a compute loop with no calls, for the timeout test.
		x := 0
		for {
			x++
		}
	case "segv-default":
		// With SIGSEGV back at its default action (a raw rt_sigaction: the
		// runtime would refuse), a fault is fatal: the monitor reports it.
		var act [4]uint64 // SIG_DFL
		if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGSEGV), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0); e != 0 {
			return e
		}
		var p *int
		fmt.Println(*p)
	case "nil":
		var p *int
		fmt.Println(*p)
	case "exit":
		code, _ := strconv.Atoi(arg)
		os.Exit(code)
	default:
		return fmt.Errorf("unknown check %q", name)
	}
	return nil
}
