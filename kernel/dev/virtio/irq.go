package virtio

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Interrupt is a device's interrupt as a counter the device side bumps
// for every interrupt it raises. A driver reads Count, checks its rings
// and, finding nothing, calls Wait with the count it read: a raise in
// between makes Wait return at once.
type Interrupt interface {
	Count() uint32
	// Wait blocks until Count() != seen or timeout passes (<0: no
	// timeout). It may return early.
	Wait(seen uint32, timeout time.Duration)
}

// FutexIRQ is a device interrupt in a CumulusDB image: the word
// BootInfo.IRQCount[irq]. The monitor increments it and the kernel wakes
// every futex waiter on its address.
type FutexIRQ struct{ addr *uint32 }

// NewFutexIRQ returns the interrupt whose counter word is at addr.
func NewFutexIRQ(addr *uint32) FutexIRQ { return FutexIRQ{addr} }

// Count implements Interrupt.
func (f FutexIRQ) Count() uint32 { return atomic.LoadUint32(f.addr) }

// Wait implements Interrupt with FUTEX_WAIT (not private: the kernel keys
// waiters by address either way). unix.Syscall6 (not RawSyscall) tells
// the Go runtime that the thread blocks, so its P runs other goroutines.
func (f FutexIRQ) Wait(seen uint32, timeout time.Duration) {
	var ts *unix.Timespec
	if timeout >= 0 {
		t := unix.NsecToTimespec(int64(timeout))
		ts = &t
	}
	const futexWait = 0
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(f.addr)), futexWait, uintptr(seen), uintptr(unsafe.Pointer(ts)), 0, 0)
}
