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

// faultTrap reports a CPU exception: the monitor prints the registers, the
// symbolised instruction pointer and a frame-pointer backtrace, then stops
// the VM with a signal-style exit status. (Delivering SIGSEGV & co. to the
// program as signals comes with the memory-subsystem issue.)
func faultTrap() {
	pc := pcpu()
	stats.Faults++
	ff := (*trapFrame)(ptrOf(uintptr(pc.self) + boot.PCFaultFrame))
	inKernel := ff.kind
	pc.hcArgs[0] = uint64(uintptr(unsafe.Pointer(ff)))
	pc.hcArgs[1] = ff.errcode
	pc.hcArgs[2] = inKernel
	for {
		outl(boot.HCFault, uint32(ff.vector))
	}
}
