package kapi

import (
	"errors"
	"fmt"
)

// Snapshots (DESIGN §3 "snapshots"): a copy-on-write view of memory the
// program owns, for analytical queries while OLTP writers go on (HTAP).
// Snapshot returns a view whose contents are those of mem at the instant
// of the call; writers of mem do not change it afterwards, and the view
// may be read (or written, privately) until Release.
//
// Implementations:
//   - the unikernel (kapi/unikernel): page-table-level copy-on-write
//     inside the kernel. No data is copied at creation; the view is a new
//     virtual range whose page tables share the source's frames
//     write-protected, and the first write on either side copies a page.
//     mem must be 2 MiB aligned (start and length; reserve with align ≥
//     2 MiB) and be memory the program allocated.
//   - Linux (kapi/linux): the view is a private copy, made while the
//     source is write-protected with userfaultfd (UFFDIO_WRITEPROTECT), so
//     writers run on during the copy and the copy is exact; a writer
//     touching a page not yet copied waits until that page is copied.
//     Creation costs a full copy. Where userfaultfd write-protection is
//     unavailable, a plain copy is made, exact only if no writer runs
//     during the call (SnapshotView.Method says which).

// SnapshotView is one snapshot.
type SnapshotView struct {
	// Mem is the view: len(Mem) equals the source's length.
	Mem []byte
	// Method names how the snapshot was made ("page-table", "uffd-wp",
	// "copy").
	Method string
	// Handle is owned by the implementation.
	Handle any
}

// Snapshotter is implemented by kernels that take snapshots.
type Snapshotter interface {
	Snapshot(mem []byte) (*SnapshotView, error)
	// ReleaseSnapshot drops the view; v.Mem must not be used afterwards.
	// Releasing a view twice is an error.
	ReleaseSnapshot(v *SnapshotView) error
}

// ErrSnapshotReleased is returned (wrapped) when a view is released twice
// or is not a live snapshot.
var ErrSnapshotReleased = errors.New("kapi: not a live snapshot (released already?)")

// Snapshot takes a snapshot of mem on k.
func Snapshot(k Kernel, mem []byte) (*SnapshotView, error) {
	s, ok := k.(Snapshotter)
	if !ok {
		return nil, fmt.Errorf("kapi: %s has no snapshots: %w", k.Name(), ErrUnsupported)
	}
	return s.Snapshot(mem)
}

// ReleaseSnapshot releases v on k.
func ReleaseSnapshot(k Kernel, v *SnapshotView) error {
	s, ok := k.(Snapshotter)
	if !ok {
		return fmt.Errorf("kapi: %s has no snapshots: %w", k.Name(), ErrUnsupported)
	}
	return s.ReleaseSnapshot(v)
}

// WritePreparer is implemented by kernels whose snapshots copy lazily:
// PrepareWrite makes b privately writable now, as write faults on its
// pages would, without taking them. A writer that knows where it will
// write saves the faults; an analytical thread that calls it on a
// snapshot's source right after taking the snapshot takes the copies off
// the writers' path (each page is copied once, by whoever comes first).
type WritePreparer interface {
	PrepareWrite(b []byte) error
}

// PrepareWrite calls k's PrepareWrite where it has one. Elsewhere it
// does nothing: there, snapshots are copies made at creation (Linux), so
// writers never wait for a copy afterwards.
func PrepareWrite(k Kernel, b []byte) error {
	if p, ok := k.(WritePreparer); ok {
		return p.PrepareWrite(b)
	}
	return nil
}
