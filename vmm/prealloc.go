package vmm

import (
	"errors"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// prealloc backs mem with host pages now, one host thread per CPU, each
// taking 64 MiB pieces in turn. MADV_POPULATE_WRITE (Linux 5.14) faults
// the pages in without touching their contents; where the kernel lacks
// it, writing one byte per 4 KiB page does the same (the memory is fresh,
// so the byte is already zero).
func prealloc(mem []byte) error {
	const piece = 64 << 20
	var (
		mu    sync.Mutex
		next  int
		first error
		wg    sync.WaitGroup
	)
	work := func() {
		defer wg.Done()
		for {
			mu.Lock()
			lo := next
			next += piece
			stop := first != nil
			mu.Unlock()
			if stop || lo >= len(mem) {
				return
			}
			p := mem[lo:min(lo+piece, len(mem))]
			err := unix.Madvise(p, unix.MADV_POPULATE_WRITE)
			if errors.Is(err, unix.EINVAL) {
				for i := 0; i < len(p); i += 4096 {
					p[i] = 0
				}
				err = nil
			}
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}
	}
	for range runtime.NumCPU() {
		wg.Add(1)
		go work()
	}
	wg.Wait()
	return first
}
