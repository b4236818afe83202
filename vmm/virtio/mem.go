package virtio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Memory is guest-physical memory as the monitor sees it: address a is
// b[a]. Every access is bounds-checked, because every address in a queue
// comes from the guest and may be anything.
//
// Ring indices and flags are shared with a driver running concurrently
// (a vCPU, or a goroutine in tests), so they are read and written with
// atomic operations on the aligned 32-bit word that holds them: that
// orders the device's reads of descriptors after its read of avail.idx,
// and its writes of used elements before its write of used.idx (the
// barriers the virtio spec asks for, and happens-before edges for Go's
// race detector). Buffers are plain bytes, ordered by those indices.
type Memory struct {
	b []byte
}

// NewMemory wraps b, whose first byte is guest-physical address 0. b must
// be 4-byte aligned (guest RAM is page-aligned; Go allocates large slices
// aligned).
func NewMemory(b []byte) Memory { return Memory{b: b} }

// Len is the size of guest memory in bytes.
func (m Memory) Len() uint64 { return uint64(len(m.b)) }

// Slice returns the n bytes at addr, or false if any of them lies outside
// memory (overflow included).
func (m Memory) Slice(addr, n uint64) ([]byte, bool) {
	end := addr + n
	if end < addr || end > uint64(len(m.b)) {
		return nil, false
	}
	return m.b[addr:end:end], true
}

// InRange reports whether [addr, addr+n) lies in memory.
func (m Memory) InRange(addr, n uint64) bool {
	end := addr + n
	return end >= addr && end <= uint64(len(m.b))
}

// Read16, Read32 and Read64 read little-endian values with plain loads.
func (m Memory) Read16(addr uint64) (uint16, error) {
	b, ok := m.Slice(addr, 2)
	if !ok {
		return 0, fmt.Errorf("virtio: address %#x+2 outside guest memory", addr)
	}
	return binary.LittleEndian.Uint16(b), nil
}

func (m Memory) Read32(addr uint64) (uint32, error) {
	b, ok := m.Slice(addr, 4)
	if !ok {
		return 0, fmt.Errorf("virtio: address %#x+4 outside guest memory", addr)
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (m Memory) Read64(addr uint64) (uint64, error) {
	b, ok := m.Slice(addr, 8)
	if !ok {
		return 0, fmt.Errorf("virtio: address %#x+8 outside guest memory", addr)
	}
	return binary.LittleEndian.Uint64(b), nil
}

// Write16, Write32 and Write64 store little-endian values with plain
// stores.
func (m Memory) Write16(addr uint64, v uint16) error {
	b, ok := m.Slice(addr, 2)
	if !ok {
		return fmt.Errorf("virtio: address %#x+2 outside guest memory", addr)
	}
	binary.LittleEndian.PutUint16(b, v)
	return nil
}

func (m Memory) Write32(addr uint64, v uint32) error {
	b, ok := m.Slice(addr, 4)
	if !ok {
		return fmt.Errorf("virtio: address %#x+4 outside guest memory", addr)
	}
	binary.LittleEndian.PutUint32(b, v)
	return nil
}

func (m Memory) Write64(addr uint64, v uint64) error {
	b, ok := m.Slice(addr, 8)
	if !ok {
		return fmt.Errorf("virtio: address %#x+8 outside guest memory", addr)
	}
	binary.LittleEndian.PutUint64(b, v)
	return nil
}

// word returns the aligned 32-bit word holding the 2-byte-aligned addr and
// the shift of addr's half in it (little-endian).
func (m Memory) word(addr uint64) (*uint32, uint, bool) {
	if addr&1 != 0 {
		return nil, 0, false
	}
	w := addr &^ 3
	if !m.InRange(w, 4) {
		return nil, 0, false
	}
	return (*uint32)(unsafe.Pointer(&m.b[w])), uint(addr-w) * 8, true
}

// Load16 atomically loads the 2-byte-aligned little-endian value at addr
// (an acquire: later reads see what the writer stored before it).
func (m Memory) Load16(addr uint64) (uint16, error) {
	p, sh, ok := m.word(addr)
	if !ok {
		return 0, fmt.Errorf("virtio: ring index at %#x misaligned or outside guest memory", addr)
	}
	return uint16(atomic.LoadUint32(p) >> sh), nil
}

// Store16 atomically stores v at the 2-byte-aligned addr, leaving the
// other half of its word intact even if someone writes it concurrently
// (a release: earlier writes are visible to whoever sees v).
func (m Memory) Store16(addr uint64, v uint16) error {
	p, sh, ok := m.word(addr)
	if !ok {
		return fmt.Errorf("virtio: ring index at %#x misaligned or outside guest memory", addr)
	}
	for {
		old := atomic.LoadUint32(p)
		nw := old&^(0xffff<<sh) | uint32(v)<<sh
		if atomic.CompareAndSwapUint32(p, old, nw) {
			return nil
		}
	}
}
