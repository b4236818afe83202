//go:build linux

package linux

// Snapshots on Linux (kapi.Snapshotter). A process cannot edit its page
// tables, so the view is a private copy. To make the copy exact while
// writers go on, the source is write-protected with userfaultfd
// (UFFDIO_WRITEPROTECT, Linux ≥ 5.7 for anonymous memory; root or
// vm.unprivileged_userfaultfd=1) before copying: a writer that touches a
// page not copied yet faults, the copier copies that page next
// and lifts the protection for it, and the writer resumes. The copier lifts
// the protection chunk by chunk behind itself, serving faults between
// chunks. Creation therefore costs a
// full copy (and the view's memory), unlike the unikernel's page-table
// snapshot; a fork()-based snapshot (HyPer) is measured by bench/snapshot.
// Without userfaultfd the view is a plain copy, exact only if no writer
// runs during the call (Method "copy").

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
)

const (
	uffdAPI            = 0xAA
	uffdioAPI          = 0xc018aa3f
	uffdioRegister     = 0xc020aa00
	uffdioUnregister   = 0x8010aa01
	uffdioWriteprotect = 0xc018aa06
	uffdRegisterModeWP = 1 << 1
	uffdWPModeWP       = 1 << 0
	uffdFeatureWP      = 1 << 0  // UFFD_FEATURE_PAGEFAULT_FLAG_WP
	uffdFeatureWPUnpop = 1 << 14 // UFFD_FEATURE_WP_UNPOPULATED (6.4+)
	uffdEventPagefault = 0x12
	snapChunk          = 2 << 20
	snapPage           = 4096
)

type uffdioRange struct{ start, len uint64 }

type snapHandle struct {
	view     []byte
	released atomic.Bool
}

// Snapshot implements kapi.Snapshotter.
func (Kernel) Snapshot(mem []byte) (*kapi.SnapshotView, error) {
	n := len(mem)
	if n == 0 || uintptr(unsafe.Pointer(&mem[0]))%snapPage != 0 || n%snapPage != 0 {
		return nil, fmt.Errorf("kapi/linux: snapshot: range must be page aligned and non-empty: %w", unix.EINVAL)
	}
	view, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("kapi/linux: snapshot: %w", err)
	}
	unix.Madvise(view, unix.MADV_HUGEPAGE)
	method := "uffd-wp"
	if err := uffdCopy(mem, view); err != nil {
		// No userfaultfd here: a plain copy (exact only without writers).
		method = "copy"
		copy(view, mem)
	}
	return &kapi.SnapshotView{Mem: view, Method: method, Handle: &snapHandle{view: view}}, nil
}

// ReleaseSnapshot implements kapi.Snapshotter.
func (Kernel) ReleaseSnapshot(v *kapi.SnapshotView) error {
	h, ok := v.Handle.(*snapHandle)
	if !ok || h.released.Swap(true) {
		return fmt.Errorf("kapi/linux: release: %w", kapi.ErrSnapshotReleased)
	}
	return unix.Munmap(h.view)
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p)); e != 0 {
		return e
	}
	return nil
}

// uffdCopy copies src into dst while src is write-protected.
func uffdCopy(src, dst []byte) error {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if e != 0 {
		return e
	}
	uffd := int(fd)
	defer unix.Close(uffd)
	api := struct{ api, features, ioctls uint64 }{api: uffdAPI, features: uffdFeatureWP | uffdFeatureWPUnpop}
	if err := ioctlPtr(uffd, uffdioAPI, unsafe.Pointer(&api)); err != nil {
		// Older kernels: without WP_UNPOPULATED, untouched pages are not
		// protected; a write to one would reach the copy. Retry without
		// it and populate the source first.
		unix.Close(uffd)
		fd, _, e = unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
		if e != 0 {
			return e
		}
		uffd = int(fd)
		api = struct{ api, features, ioctls uint64 }{api: uffdAPI, features: uffdFeatureWP}
		if err := ioctlPtr(uffd, uffdioAPI, unsafe.Pointer(&api)); err != nil {
			return err
		}
		unix.Madvise(src, unix.MADV_POPULATE_WRITE)
	}
	base := uint64(uintptr(unsafe.Pointer(&src[0])))
	n := uint64(len(src))
	reg := struct {
		rng    uffdioRange
		mode   uint64
		ioctls uint64
	}{rng: uffdioRange{base, n}, mode: uffdRegisterModeWP}
	if err := ioctlPtr(uffd, uffdioRegister, unsafe.Pointer(&reg)); err != nil {
		return err
	}
	defer ioctlPtr(uffd, uffdioUnregister, unsafe.Pointer(&uffdioRange{base, n}))
	protect := func(off, length uint64, on bool) error {
		wp := struct {
			rng  uffdioRange
			mode uint64
		}{rng: uffdioRange{base + off, length}}
		if on {
			wp.mode = uffdWPModeWP
		}
		return ioctlPtr(uffd, uffdioWriteprotect, unsafe.Pointer(&wp))
	}
	// The snapshot instant: from here on writers fault.
	if err := protect(0, n, true); err != nil {
		return err
	}
	// One goroutine copies and serves faults between chunks: a writer
	// that faulted waits at most one chunk's copy. (A separate handler
	// goroutine would need a P, which the faulting writer's thread holds
	// while it is blocked in the fault.) A fault is served by copying its
	// whole 2 MiB chunk and lifting the protection of the chunk: lifting
	// it for one 4 KiB page would split a transparent huge page of the
	// source, and a random writer would take one fault per page instead
	// of one per chunk. Most of creation is the view's fresh memory:
	// ~0.2 ms per 2 MiB to zero, ~8 ms where the host is a VM whose free
	// memory goes back to its hypervisor (bench/snapshot).
	done := make([]bool, (n+snapChunk-1)/snapChunk)
	copyChunk := func(c uint64) error {
		if done[c] {
			return nil
		}
		off := c * snapChunk
		end := min(off+snapChunk, n)
		copy(dst[off:end], src[off:end])
		done[c] = true
		return protect(off, end-off, false) // wakes writers waiting in it
	}
	var msg [32]byte
	serve := func() error {
		for {
			r, err := unix.Read(uffd, msg[:])
			if err != nil || r != len(msg) {
				return nil
			}
			if msg[0] != uffdEventPagefault {
				continue
			}
			off := *(*uint64)(unsafe.Pointer(&msg[16])) - base
			if off >= n {
				continue
			}
			if err := copyChunk(off / snapChunk); err != nil {
				return err
			}
		}
	}
	for c := range done {
		if err := serve(); err != nil {
			return err
		}
		if err := copyChunk(uint64(c)); err != nil {
			return err
		}
	}
	return serve()
}
