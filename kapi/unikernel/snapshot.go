package unikernel

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/mm"
)

// Snapshot implements kapi.Snapshotter by kernel call: page-table-level
// copy-on-write (kernel/snapshot.go, kernel/mm/cow.go). mem must be 2 MiB
// aligned and allocated (committed) memory of the program.
func (Kernel) Snapshot(mem []byte) (*kapi.SnapshotView, error) {
	if len(mem) == 0 {
		return nil, fmt.Errorf("kapi/unikernel: snapshot of an empty range: %w", unix.EINVAL)
	}
	a := uintptr(unsafe.Pointer(&mem[0]))
	view, errno := kcall(boot.KCSnapCreate, uint64(a), uint64(len(mem)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("kapi/unikernel: snapshot of [%#x, +%d): %w", a, len(mem), unix.Errno(errno))
	}
	p := uintptr(view)
	return &kapi.SnapshotView{Mem: unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&p))), len(mem)), Method: "page-table"}, nil
}

// ReleaseSnapshot implements kapi.Snapshotter. The kernel refuses a view
// that is not live (released twice): EINVAL wrapped with
// kapi.ErrSnapshotReleased.
func (Kernel) ReleaseSnapshot(v *kapi.SnapshotView) error {
	if v == nil || len(v.Mem) == 0 {
		return fmt.Errorf("kapi/unikernel: release: %w", kapi.ErrSnapshotReleased)
	}
	a := uintptr(unsafe.Pointer(&v.Mem[0]))
	if _, errno := kcall(boot.KCSnapRelease, uint64(a), 0, 0); errno != 0 {
		return fmt.Errorf("kapi/unikernel: release snapshot %#x: %w (%w)", a, kapi.ErrSnapshotReleased, unix.Errno(errno))
	}
	return nil
}

// SnapshotCounters are the kernel's snapshot counters (kernel/mm).
type SnapshotCounters = mm.SnapCounters

// SnapshotStats reads the kernel's snapshot counters.
func SnapshotStats() (SnapshotCounters, error) {
	var c SnapshotCounters
	if _, errno := kcall(boot.KCSnapStats, uint64(uintptr(unsafe.Pointer(&c))), 0, 0); errno != 0 {
		return c, fmt.Errorf("kapi/unikernel: snapshot stats: %w", unix.Errno(errno))
	}
	return c, nil
}

// PrepareWrite implements kapi.WritePreparer: it makes [&b[0], +len(b))
// privately writable now, as write faults on its pages would, without
// taking them. A writer that knows where it will write pays a kernel
// call (~tens of ns + the copy) instead of a fault (~20 µs under PVM).
// Any thread may call it on a snapshot's source: an analytical thread
// that privatises the source before it scans takes the copies off the
// writers' path (they copy in parallel, each page once, whoever comes
// first). Without live snapshots it does nothing.
func (Kernel) PrepareWrite(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if _, errno := kcall(boot.KCSnapBreak, uint64(uintptr(unsafe.Pointer(&b[0]))), uint64(len(b)), 0); errno != 0 {
		return fmt.Errorf("kapi/unikernel: prepare write: %w", unix.Errno(errno))
	}
	return nil
}
