package kapi

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// VMA is a range of the database's address space with its own lock, so
// that work on one range (filling, evicting, snapshotting) does not block
// work on others (DESIGN §3 "VMAs: per-range locks").
type VMA struct {
	Start, End uintptr // [Start, End)
	Data       any     // the owner's bookkeeping
	sync.RWMutex
}

// VMAs is a set of non-overlapping VMAs: insert, erase, and find the ones
// intersecting a range. Lookups take a read lock on the set only; the
// caller then locks the VMAs it works on.
type VMAs struct {
	mu    sync.RWMutex
	areas []*VMA // sorted by Start; Start < End; no overlaps
}

// ErrOverlap reports an insert over an existing VMA.
var ErrOverlap = errors.New("kapi: VMA overlaps an existing one")

// Insert adds v; it fails if v overlaps a VMA already in the set.
func (s *VMAs) Insert(v *VMA) error {
	if v.Start >= v.End {
		return fmt.Errorf("kapi: VMA [%#x, %#x) is empty", v.Start, v.End)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.areas), func(i int) bool { return s.areas[i].End > v.Start })
	if i < len(s.areas) && s.areas[i].Start < v.End {
		return fmt.Errorf("kapi: insert [%#x, %#x): %w [%#x, %#x)", v.Start, v.End, ErrOverlap, s.areas[i].Start, s.areas[i].End)
	}
	s.areas = append(s.areas, nil)
	copy(s.areas[i+1:], s.areas[i:])
	s.areas[i] = v
	return nil
}

// Erase removes v (by identity); it reports whether v was in the set.
func (s *VMAs) Erase(v *VMA) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.areas), func(i int) bool { return s.areas[i].Start >= v.Start })
	if i < len(s.areas) && s.areas[i] == v {
		s.areas = append(s.areas[:i], s.areas[i+1:]...)
		return true
	}
	return false
}

// Find returns the VMA containing addr, or nil.
func (s *VMAs) Find(addr uintptr) *VMA {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := sort.Search(len(s.areas), func(i int) bool { return s.areas[i].End > addr })
	if i < len(s.areas) && s.areas[i].Start <= addr {
		return s.areas[i]
	}
	return nil
}

// Intersecting returns the VMAs overlapping [start, end), in address order.
func (s *VMAs) Intersecting(start, end uintptr) []*VMA {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := sort.Search(len(s.areas), func(i int) bool { return s.areas[i].End > start })
	var out []*VMA
	for ; i < len(s.areas) && s.areas[i].Start < end; i++ {
		out = append(out, s.areas[i])
	}
	return out
}

// Len is the number of VMAs.
func (s *VMAs) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.areas)
}

// TLB is offered by kernels that let the database manage translations
// (DESIGN §3 "TLB"); use AsTLB.
type TLB interface {
	// FlushTLB makes every CPU drop cached translations (a shootdown).
	FlushTLB() error
}

// AsTLB returns k's TLB control, or ErrUnsupported (Linux gives a
// process no TLB control: it flushes implicitly on munmap/mprotect).
func AsTLB(k Kernel) (TLB, error) {
	if t, ok := k.(TLB); ok {
		return t, nil
	}
	return nil, fmt.Errorf("kapi: %s offers no TLB control: %w", k.Name(), ErrUnsupported)
}
