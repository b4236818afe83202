// Command cumulusdb is the CumulusDB server. The SQL server over the
// PostgreSQL protocol arrives with the SQL issue; until then this program
// shows the image working: it reports the machine it booted on and
// exercises the runtime the database will use (goroutines on every vCPU,
// the clock, the heap).
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

func main() {
	start := time.Now()
	fmt.Printf("cumulusdb: booted; GOMAXPROCS=%d, Go %s, args %q\n", runtime.GOMAXPROCS(0), runtime.Version(), os.Args[1:])
	// One worker per vCPU, each hashing a private buffer.
	var wg sync.WaitGroup
	sums := make([]uint64, runtime.GOMAXPROCS(0))
	for w := range sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 8<<20)
			h := uint64(14695981039346656037)
			for i := range buf {
				buf[i] = byte(i * (w + 1))
				h = (h ^ uint64(buf[i])) * 1099511628211
			}
			sums[w] = h
		}()
	}
	wg.Wait()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("cumulusdb: %d workers done in %v; heap %d MiB from the guest kernel\n", len(sums), time.Since(start).Round(time.Microsecond), ms.HeapSys>>20)
	fmt.Println("cumulusdb: the SQL server (PostgreSQL protocol) is not built yet: see the open issues; exiting")
}
