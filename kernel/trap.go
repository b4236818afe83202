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
// waker supplies the result.
const blocked = -1 << 62

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
		return
	}
	t.tf.rax = uint64(r)
	preemptCheck(c, false)
}

func tickTrap() {
	pc := pcpu()
	atomic.AddUint64(&pc.ticks, 1)
	preemptCheck(int(pc.cpu), true)
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
		ff = &threads[curThread[int(pc.cpu)]].tf
		if ff.vector == 14 {
			outl(boot.HCCR2, 0)
			if demandPage(uintptr(pc.hcArgs[0])) {
				atomic.AddUint64(&stats.PageFaults, 1)
				return // resume the thread (its frame is complete)
			}
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
