package kernel

// Go halves of the entry stubs. Constraints: trap context (cpu.go); each
// runs on the CPU's kernel stack with the running thread's registers
// already saved, and returns into `resume`, which restores whatever thread
// pcpu().curFrame names by then.

import (
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// blocked is returned by system calls that parked the calling thread: the
// waker supplies the result. noResult is returned by rt_sigreturn, which
// restores RAX itself.
const (
	blocked  = -1 << 62
	noResult = -1<<62 + 1
)

// leaveKernel runs last on every path back to a program thread: signals
// pending for the thread about to resume are delivered now.
func leaveKernel(c int) {
	if cur := curThread[c]; cur >= 0 {
		deliverSignals(&threads[cur])
	}
}

func syscallTrap() {
	if booted.Load() == 0 {
		kinit()
	}
	pc := pcpu()
	c := int(pc.cpu)
	cur := curThread[c]
	t := &threads[cur]
	nr := t.tf.rax
	if nr < uint64(len(stats.Syscalls)) {
		atomic.AddUint64(&stats.Syscalls[nr], 1)
	}
	r := dispatch(c, cur, t, nr)
	if r == blocked {
		leaveKernel(c)
		return
	}
	if r != noResult {
		t.tf.rax = uint64(r)
	}
	preemptCheck(c, false)
	leaveKernel(c)
}

func tickTrap() {
	pc := pcpu()
	atomic.AddUint64(&pc.ticks, 1)
	if booted.Load() == 0 {
		// A tick before the program's first system call (a slow start
		// on a loaded host): nothing is set up to schedule yet, not even
		// the thread table; resume the program.
		return
	}
	preemptCheck(int(pc.cpu), true)
	leaveKernel(int(pc.cpu))
}

// idleTrap starts a secondary vCPU: wait for vCPU 0 to initialise the
// kernel, then run whatever becomes runnable.
func idleTrap() {
	pc := pcpu()
	for booted.Load() == 0 {
		cpuPause()
	}
	c := int(pc.cpu)
	klock.lock()
	pickNext(c)
	leaveKernel(c)
}

// faultTrap handles a CPU exception. A page fault in the program on
// memory it committed (mmap with PROT_READ/WRITE) is demand paging: map the
// 2 MiB block around it and resume. Anything else is reported by the
// monitor, which prints the registers, the symbolised instruction pointer
// and a frame-pointer backtrace, then stops the VM with a signal-style exit
// status. (Delivering SIGSEGV & co. to the program as signals comes with the
// memory-subsystem issue.)
func faultTrap() {
	pc := pcpu()
	var ff *trapFrame
	if pc.faultUser != 0 {
		t := &threads[curThread[int(pc.cpu)]]
		ff = &t.tf
		var cr2 uint64
		if ff.vector == 14 {
			// The address: decoded from the instruction where that
			// works (faultaddr.go), else CR2 by an exit. A decoded
			// address that resolved nothing, or the same fault again
			// right after one that did, asks CR2.
			decoded := false
			if ff.errcode&0x10 == 0 { // a data access, not a fetch
				if a, ok := faultAddr(ff, ff.errcode&2 != 0); ok && (ff.rip != t.pfRIP || uint64(a) != t.pfAddr) {
					cr2, decoded = uint64(a), true
				}
			}
			t.pfRIP = 0
			for {
				if !decoded {
					outl(boot.HCCR2, 0)
					cr2 = pc.hcArgs[0]
				}
				// A write (bit 1) to a present page (bit 0) is a write to a
				// page a snapshot write-protected: copy-on-write
				// (snapshot.go). Anything else may be demand paging.
				if (ff.errcode&3 == 3 && cowFault(uintptr(cr2))) || demandPage(uintptr(cr2)) {
					atomic.AddUint64(&stats.PageFaults, 1)
					if decoded {
						atomic.AddUint64(&stats.PFDecoded, 1)
						t.pfRIP, t.pfAddr = ff.rip, cr2
					}
					t.pfRetries = 0
					leaveKernel(int(pc.cpu))
					return // resume the thread (its frame is complete)
				}
				if !decoded {
					break
				}
				atomic.AddUint64(&stats.PFDecodeMisses, 1)
				decoded = false
			}
			// Under PVM, KVM_GET_SREGS occasionally reports CR2 = 0 for a
			// genuine fault on committed memory (seen as "nil" faults on
			// the first touch of fresh heap spans). Re-executing the
			// instruction faults again with the right address; a real bad
			// access faults the same way three times and gets its signal.
			if t.pfRetries < 2 {
				t.pfRetries++
				atomic.AddUint64(&stats.PFRetries, 1)
				leaveKernel(int(pc.cpu))
				return
			}
			t.pfRetries = 0
		}
		// A fault the program handles (the Go runtime turns SIGSEGV,
		// SIGBUS, SIGFPE into panics) resumes in its handler.
		if deliverFault(t, int(ff.vector), ff.errcode, cr2) {
			return
		}
	} else {
		ff = (*trapFrame)(ptrOf(uintptr(pc.self) + boot.PCFaultFrame))
	}
	stats.Faults++
	pc.hcArgs[0] = uint64(uintptr(unsafe.Pointer(ff)))
	pc.hcArgs[1] = ff.errcode
	pc.hcArgs[2] = 1 - pc.faultUser
	for {
		outl(boot.HCFault, uint32(ff.vector))
	}
}
