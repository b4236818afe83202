package kernel

// Kernel calls: the database (through kapi/unikernel) calls the kernel
// directly, without a trap. The program's stub marks the CPU as in the
// kernel, switches to the kernel's FS and stack and calls kcallEntry; it
// switches back afterwards. Constraints: trap context (cpu.go), and the
// caller is a program thread that cannot migrate until the call returns.

import (
	"github.com/cumulusdb/cumulus/kernel/boot"
)

func kcall(op, a0, a1, a2 uint64) (r0, r1 uint64) {
	if booted.Load() == 0 {
		return 0, _ENOSYS
	}
	switch op {
	case boot.KCFramesAlloc:
		pa, err := framesAlloc(int(a0))
		if err != nil {
			return 0, _ENOMEM
		}
		return uint64(pa), 0
	case boot.KCFramesFree:
		if err := framesFree(uintptr(a0), int(a1)); err != nil {
			return 0, _EINVAL
		}
		return 0, 0
	case boot.KCFramesStats:
		return frames.Free(), frames.Total
	case boot.KCCPU:
		return pcpu().cpu, 0
	case boot.KCNop:
		return 0, 0
	case boot.KCSnapCreate:
		view, e := snapCreate(uintptr(a0), uintptr(a1))
		return uint64(view), uint64(-e)
	case boot.KCSnapRelease:
		return 0, uint64(-snapRelease(uintptr(a0)))
	case boot.KCSnapStats:
		return 0, uint64(-snapStatsTo(uintptr(a0)))
	case boot.KCSnapBreak:
		return 0, uint64(-snapBreak(uintptr(a0), uintptr(a1)))
	case boot.KCFlushTLB:
		outl(boot.HCFlush, 0)
		stats.Shootdowns++
		return 0, 0
	}
	return 0, _ENOSYS
}

// framesAlloc hands out 2^order contiguous 4 KiB frames (orders 0–9, and
// 18 for 1 GiB where memory allows), addressed through the direct map,
// with unspecified contents. LLFree is lock-free: no kernel lock is taken.
func framesAlloc(order int) (uintptr, error) { return frames.Get(order, false) }

func framesFree(pa uintptr, order int) error { return frames.Put(pa, order) }
