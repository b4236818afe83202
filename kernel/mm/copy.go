package mm

// Copying data frames for copy-on-write breaks. Trap context (see cow.go).
//
// Why not copy(): the kernel's Go code runs without the runtime's CPU
// detection (its init never runs), so runtime.memmove takes its generic
// REP MOVSQ path, which measured ~2× slower here than the user-space
// memmove for a 2 MiB page (280-360 µs against 130-180 µs): and that
// copy is most of what a writer waits for in a break. A 2 MiB copy also
// evicts 4 MiB of cache that neither side will read soon, so the stores
// are non-temporal.

import (
	"sync/atomic"
	"unsafe"
)

func copyNT(dst, src unsafe.Pointer, n uintptr)
func cpuAVX2() bool

// avx2: 0 unknown, 1 no, 2 yes (CPUID once, on the first large copy).
var avx2 atomic.Uint32

// copyData copies n bytes from src to dst.
//
//go:nosplit
func copyData(dst, src unsafe.Pointer, n uintptr) {
	if n >= 64<<10 && n%256 == 0 && uintptr(dst)%32 == 0 {
		a := avx2.Load()
		if a == 0 {
			a = 1
			if cpuAVX2() {
				a = 2
			}
			avx2.Store(a)
		}
		if a == 2 {
			copyNT(dst, src, n)
			return
		}
	}
	copy(unsafe.Slice((*byte)(dst), n), unsafe.Slice((*byte)(src), n))
}
