package vmm

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"

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
		next atomic.Int64
		wg   sync.WaitGroup
	)
	errs := make([]error, runtime.NumCPU())
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				lo := int(next.Add(piece)) - piece
				if lo >= len(mem) {
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
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
