// Package unikernel is kapi inside a CumulusDB image. Importing it
// registers an implementation that Default prefers whenever the program
// runs on CumulusDB's kernel (probe: uname's release), so one binary uses
// Linux as a process and the unikernel in the image.
//
// What differs from Linux:
//   - Resident and ResidentBatch walk the x86-64 page table by plain loads
//     from the program (the tables are mapped in its address space): no
//     system call, no /proc, no mincore. This is the first talk's
//     page-presence check.
//   - Reserve, Allocate, Discard and Free use the same system calls as
//     kapi/linux, which the kernel serves: reservations take no frames,
//     allocated ranges are mapped on first touch in 2 MiB blocks, Discard
//     makes the range read as zero. (The kernel zeroes discarded memory in
//     place and keeps its frames: frame reclaim needs TLB shootdowns, still
//     to come, so a discarded page stays "resident".)
//   - OpenBlock("/dev/vda") (or "vda") opens a virtio-blk disk the monitor
//     attached, driven from the program's goroutines (blk.go); it is also
//     a kapi.BlockQueue (OpenBlockQueue). Other paths are files on host
//     shares; the monitor forwards their I/O (buffered: no O_DIRECT
//     through shares).
package unikernel

import (
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/mm"
)

func init() { kapi.Register(Kernel{}, 10, Probe) }

// Probe reports whether this program runs on CumulusDB's kernel.
func Probe() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return strings.Contains(unix.ByteSliceToString(u.Release[:]), "cumulus")
}

// Kernel is the unikernel implementation of kapi.Kernel.
type Kernel struct{}

// Name implements kapi.Kernel.
func (Kernel) Name() string { return "unikernel" }

// Memory implements kapi.Kernel.
func (Kernel) Memory() kapi.Memory { return memory{Memory: linux.Kernel{}.Memory()} }

type memory struct{ kapi.Memory }

// present walks the live page table by plain loads. RAM is identity-mapped,
// so the physical addresses in its entries are also virtual ones; the walk
// is unrolled (it is the whole cost of a presence check) and stops at a
// 2 MiB mapping. Entries are read racily while the kernel may be writing
// them: an aligned 8-byte load never tears, and the answer is as stale as
// any presence check's.
func present(va uintptr) bool {
	const p, huge, addr = mm.PTEPresent, mm.PTEHuge, mm.PTEAddr
	e := entry(boot.PML4Addr, va>>39&511)
	if e&p == 0 {
		return false
	}
	e = entry(uintptr(e&addr), va>>30&511)
	if e&p == 0 {
		return false
	}
	e = entry(uintptr(e&addr), va>>21&511)
	if e&p == 0 {
		return false
	}
	if e&huge != 0 {
		return true
	}
	return entry(uintptr(e&addr), va>>12&511)&p != 0
}

func entry(table, i uintptr) uint64 {
	a := table + i*8
	return *(*uint64)(*(*unsafe.Pointer)(unsafe.Pointer(&a)))
}

// Resident implements kapi.Memory by a page-table walk.
func (m memory) Resident(r kapi.Region, off uintptr) (bool, error) {
	if off >= r.Len() {
		return false, fmt.Errorf("kapi/unikernel: resident: offset %d outside region of %d bytes", off, r.Len())
	}
	return present(uintptr(unsafe.Pointer(&r.Mem[off]))), nil
}

// ResidentBatch implements kapi.Memory by page-table walks.
func (m memory) ResidentBatch(r kapi.Region, off uintptr, out []bool) error {
	ps := uintptr(m.PageSize())
	if off%ps != 0 || off+uintptr(len(out))*ps > r.Len() {
		return fmt.Errorf("kapi/unikernel: resident: range [%d,+%d pages) outside region of %d bytes", off, len(out), r.Len())
	}
	if len(out) == 0 {
		return nil
	}
	base := uintptr(unsafe.Pointer(&r.Mem[off]))
	for i := range out {
		out[i] = present(base + uintptr(i)*ps)
	}
	return nil
}

// Stats implements kapi.Memory from sysinfo.
func (m memory) Stats() (kapi.MemStats, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return kapi.MemStats{}, fmt.Errorf("kapi/unikernel: stats: %w", err)
	}
	unit := uint64(si.Unit)
	total, free := si.Totalram*unit, si.Freeram*unit
	return kapi.MemStats{Total: total, Available: free, Resident: total - free}, nil
}
