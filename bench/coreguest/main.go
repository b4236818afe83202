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
	"syscall"
	"time"
)

type result struct {
	Name    string  `json:"name"`
	NsPerOp float64 `json:"ns_per_op"`
	Ops     int     `json:"ops"`
}

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
	b, _ := json.Marshal(result{Name: name, NsPerOp: float64(el.Nanoseconds()) / float64(ops), Ops: ops})
	fmt.Println(string(b))
}
