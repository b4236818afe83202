package unikernel

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kernel/boot"
)

// kcall is in kcall_amd64.s. Only call it when Probe is true: outside the
// image, GS and the boot page do not exist.
func kcall(op, a0, a1, a2 uint64) (r0, r1 uint64)

// FramesAlloc implements kapi.Frames: physically contiguous frames from the
// kernel's LLFree allocator through a kernel call (~tens of ns, no trap),
// returned through the direct map (virtual == physical).
func (Kernel) FramesAlloc(order int) ([]byte, error) {
	if order < 0 || order > 18 || (order > 9 && order != 18) {
		return nil, fmt.Errorf("kapi/unikernel: frames: order %d not supported (0–9, 18)", order)
	}
	pa, errno := kcall(boot.KCFramesAlloc, uint64(order), 0, 0)
	if errno != 0 {
		if unix.Errno(errno) == unix.ENOMEM {
			return nil, fmt.Errorf("kapi/unikernel: frames: order %d: %w", order, kapi.ErrNoMemory)
		}
		return nil, fmt.Errorf("kapi/unikernel: frames: order %d: %w", order, unix.Errno(errno))
	}
	return unsafe.Slice((*byte)(direct(pa)), 4096<<order), nil
}

// FramesFree implements kapi.Frames.
func (Kernel) FramesFree(b []byte, order int) error {
	if len(b) != 4096<<order {
		return fmt.Errorf("kapi/unikernel: frames free: %d bytes is not order %d", len(b), order)
	}
	if _, errno := kcall(boot.KCFramesFree, uint64(uintptr(unsafe.Pointer(&b[0]))), uint64(order), 0); errno != 0 {
		return fmt.Errorf("kapi/unikernel: frames free at %p order %d: double free or wrong order: %w", &b[0], order, unix.Errno(errno))
	}
	return nil
}

// FreePhysMem implements kapi.Frames.
func (Kernel) FreePhysMem() uint64 {
	free, _ := kcall(boot.KCFramesStats, 0, 0, 0)
	return free
}

// TotalPhysMem implements kapi.Frames.
func (Kernel) TotalPhysMem() uint64 {
	_, total := kcall(boot.KCFramesStats, 0, 0, 0)
	return total
}

// KernelCallNop makes an empty kernel call: its cost is the mechanism's.
func KernelCallNop() { kcall(boot.KCNop, 0, 0, 0) }

// CPU returns the vCPU the caller runs on (it may move right after).
func CPU() int {
	c, _ := kcall(boot.KCCPU, 0, 0, 0)
	return int(c)
}

// direct turns a physical address into a pointer through the direct map.
func direct(pa uint64) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&pa)) }

// FlushTLB implements kapi.TLB: a shootdown on every vCPU, by kernel call.
func (Kernel) FlushTLB() error {
	if _, errno := kcall(boot.KCFlushTLB, 0, 0, 0); errno != 0 {
		return fmt.Errorf("kapi/unikernel: flush TLB: %w", unix.Errno(errno))
	}
	return nil
}
