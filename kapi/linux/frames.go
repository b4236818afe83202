package linux

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
)

// FramesAlloc implements kapi.Frames as well as Linux allows a process:
// an anonymous mapping populated up front (MAP_POPULATE). The memory is
// NOT physically contiguous, and order 9 is not guaranteed to be one huge
// page; Linux gives a process no way to ask for either.
func (Kernel) FramesAlloc(order int) ([]byte, error) {
	if order < 0 || order > 18 {
		return nil, fmt.Errorf("kapi/linux: frames: order %d out of range", order)
	}
	b, err := unix.Mmap(-1, 0, 4096<<order, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		if errors.Is(err, unix.ENOMEM) {
			return nil, fmt.Errorf("kapi/linux: frames: %w", kapi.ErrNoMemory)
		}
		return nil, fmt.Errorf("kapi/linux: frames: %w", err)
	}
	return b, nil
}

// FramesFree implements kapi.Frames.
func (Kernel) FramesFree(b []byte, order int) error {
	if len(b) != 4096<<order {
		return fmt.Errorf("kapi/linux: frames free: %d bytes is not order %d", len(b), order)
	}
	return unix.Munmap(b)
}

// FreePhysMem implements kapi.Frames (MemAvailable).
func (k Kernel) FreePhysMem() uint64 {
	s, _ := k.Memory().Stats()
	return s.Available
}

// TotalPhysMem implements kapi.Frames (MemTotal).
func (k Kernel) TotalPhysMem() uint64 {
	s, _ := k.Memory().Stats()
	return s.Total
}
