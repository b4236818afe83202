package virtio

import (
	"fmt"
	"math/bits"
	"sync"
	"syscall"
	"unsafe"
)

// Region is physically contiguous memory a device can reach: Buf is the
// driver's view, Phys the address the device uses for Buf[0].
type Region struct {
	Buf  []byte
	Phys uint64
}

// DMA hands out memory devices can reach. It is an interface so drivers
// run unchanged over the image's direct map (Direct) and over a simulated
// physical memory in tests (SimMem).
type DMA interface {
	// Alloc returns at least size bytes (rounded up to whole 4 KiB pages,
	// possibly more), page-aligned and physically contiguous. Contents are
	// unspecified.
	Alloc(size int) (Region, error)
	// Free returns a Region from Alloc.
	Free(r Region) error
	// Phys returns the physical address of b[0] if all of b lies in
	// memory from this allocator (contiguous); ok is false otherwise.
	Phys(b []byte) (phys uint64, ok bool)
}

// FrameAllocator is what Direct needs: kapi.Frames satisfies it.
type FrameAllocator interface {
	FramesAlloc(order int) ([]byte, error)
	FramesFree(b []byte, order int) error
}

// Direct is DMA in a CumulusDB image: frames from the kernel's allocator,
// reached through the direct map, where a virtual address below RAMSize
// is its own physical address. Only use it inside the image.
type Direct struct {
	Frames  FrameAllocator
	RAMSize uint64 // end of the direct map (boot.BootInfo.RAMSize)
}

func pageOrder(size int) int {
	pages := (size + 4095) / 4096
	if pages <= 1 {
		return 0
	}
	return bits.Len(uint(pages - 1))
}

// Alloc implements DMA with 2^order frames (orders above 9 are not
// offered by the frame allocator, so 2 MiB is the largest region).
func (d Direct) Alloc(size int) (Region, error) {
	o := pageOrder(size)
	if o > 9 {
		return Region{}, fmt.Errorf("virtio: dma: %d bytes is more than 2 MiB contiguous: %w", size, syscall.EINVAL)
	}
	b, err := d.Frames.FramesAlloc(o)
	if err != nil {
		return Region{}, fmt.Errorf("virtio: dma: %w", err)
	}
	return Region{Buf: b, Phys: uint64(uintptr(unsafe.Pointer(&b[0])))}, nil
}

// Free implements DMA.
func (d Direct) Free(r Region) error {
	return d.Frames.FramesFree(r.Buf, pageOrder(len(r.Buf)))
}

// Phys implements DMA: memory of the direct map (RAM, identity-mapped)
// is its own physical address; anything above it (the Go heap, mmap
// ranges) is not contiguous physical memory.
func (d Direct) Phys(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	a := uint64(uintptr(unsafe.Pointer(&b[0])))
	if a < 2<<20 || a+uint64(len(b)) > d.RAMSize {
		return 0, false
	}
	return a, true
}

// SimMem simulates guest-physical memory for tests: physical address p
// is Mem[p-Base]. It is also what a fake device reads and writes. The
// allocator is a first-fit list of free runs of pages; it is safe for
// concurrent use.
type SimMem struct {
	Base uint64
	Mem  []byte

	mu   sync.Mutex
	free []run // sorted, coalesced, in pages
}

type run struct{ start, n int }

// NewSimMem returns size bytes (rounded up to pages) of simulated physical
// memory starting at physical address base (page-aligned). The backing
// slice is page-aligned so 32-bit atomics on ring words are aligned.
func NewSimMem(base uint64, size int) *SimMem {
	pages := (size + 4095) / 4096
	raw := make([]byte, pages*4096+4096)
	off := int((4096 - uintptr(unsafe.Pointer(&raw[0]))%4096) % 4096)
	return &SimMem{Base: base, Mem: raw[off : off+pages*4096 : off+pages*4096], free: []run{{0, pages}}}
}

// Alloc implements DMA.
func (m *SimMem) Alloc(size int) (Region, error) {
	n := (size + 4095) / 4096
	if n == 0 {
		n = 1
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, r := range m.free {
		if r.n >= n {
			start := r.start
			if r.n == n {
				m.free = append(m.free[:i], m.free[i+1:]...)
			} else {
				m.free[i] = run{r.start + n, r.n - n}
			}
			b := m.Mem[start*4096 : (start+n)*4096 : (start+n)*4096]
			for j := range b {
				b[j] = 0xa5 // "unspecified": tests catch drivers relying on zeroes
			}
			return Region{Buf: b, Phys: m.Base + uint64(start)*4096}, nil
		}
	}
	return Region{}, fmt.Errorf("virtio: sim dma: no %d contiguous pages: %w", n, syscall.ENOMEM)
}

// Free implements DMA.
func (m *SimMem) Free(r Region) error {
	if r.Phys < m.Base || (r.Phys-m.Base)%4096 != 0 {
		return fmt.Errorf("virtio: sim dma: free of %#x: not from this memory: %w", r.Phys, syscall.EINVAL)
	}
	start, n := int(r.Phys-m.Base)/4096, (len(r.Buf)+4095)/4096
	m.mu.Lock()
	defer m.mu.Unlock()
	i := 0
	for i < len(m.free) && m.free[i].start < start {
		i++
	}
	if (i > 0 && m.free[i-1].start+m.free[i-1].n > start) || (i < len(m.free) && start+n > m.free[i].start) {
		return fmt.Errorf("virtio: sim dma: double free at %#x: %w", r.Phys, syscall.EINVAL)
	}
	m.free = append(m.free, run{})
	copy(m.free[i+1:], m.free[i:])
	m.free[i] = run{start, n}
	// Coalesce with the neighbours.
	if i+1 < len(m.free) && m.free[i].start+m.free[i].n == m.free[i+1].start {
		m.free[i].n += m.free[i+1].n
		m.free = append(m.free[:i+1], m.free[i+2:]...)
	}
	if i > 0 && m.free[i-1].start+m.free[i-1].n == m.free[i].start {
		m.free[i-1].n += m.free[i].n
		m.free = append(m.free[:i], m.free[i+1:]...)
	}
	return nil
}

// Phys implements DMA.
func (m *SimMem) Phys(b []byte) (uint64, bool) {
	if len(b) == 0 || len(m.Mem) == 0 {
		return 0, false
	}
	a, lo := uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&m.Mem[0]))
	if a < lo || a+uintptr(len(b)) > lo+uintptr(len(m.Mem)) {
		return 0, false
	}
	return m.Base + uint64(a-lo), true
}

// Slice returns the simulated memory at [phys, phys+n), or nil if it is
// out of range (a device model must treat that as a driver bug).
func (m *SimMem) Slice(phys uint64, n int) []byte {
	if phys < m.Base || n < 0 || phys-m.Base+uint64(n) > uint64(len(m.Mem)) {
		return nil
	}
	o := phys - m.Base
	return m.Mem[o : o+uint64(n) : o+uint64(n)]
}
