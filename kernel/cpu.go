// Package kernel is CumulusDB's guest kernel: it services the Linux system
// calls of an unmodified, statically linked Go program running at CPL 3
// inside a KVM virtual machine started by CumulusDB's monitor (vmm).
//
// How it is put together (see ARCHITECTURE.md):
//   - The kernel is linked into its own small ELF (kernel/kmain) at
//     0x4000000000 and loaded by the monitor into the program's address
//     space. Its own Go runtime is never started: kernel code runs on a
//     per-CPU stack with a stand-in g that carries only stack bounds.
//   - Because that runtime never starts, its garbage collector never runs:
//     write barriers are off and pointers may be stored freely. What kernel
//     code must not do is anything needing the runtime: allocate (new, make,
//     append, maps, closures that escape, interface conversions of
//     non-pointers), use goroutines, channels, defer with recover, or
//     panic (a panic is a fault in the kernel: reported, VM stopped).
//   - All state is in package variables that start zero, or in memory the
//     monitor prepared (boot information, per-CPU blocks, thread table).
//     Package init never runs.
//
// Constraints of this file: trap context (see above); functions here may be
// called on any vCPU, with or without the kernel lock.
package kernel

import (
	"math/bits"
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// Assembly (entry_amd64.s).
func syscallEntry()
func tickEntry()
func apEntry()
func resume()
func outl(port uint16, arg uint32)
func percpuAddr() uintptr
func rdtsc() uint64
func rdrand() (uint64, bool)
func cpuPause()
func vdsoClockGettime()
func vdsoGettimeofday()
func kcallEntry()
func callSyscallEntry()

// perCPU mirrors the per-CPU block of kernel/boot (GS base points at it).
type perCPU struct {
	self, cpu, scratch, curFrame, kstack, kfs uint64
	inKernel, tickPend, halted                uint64
	hcArgs                                    [8]uint64
	bootInfo, istTop, ticks, ticksDeferred    uint64
	faultUser                                 uint64
}

//go:nosplit
func ptrOf(a uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&a)) }

//go:nosplit
func pcpu() *perCPU { return (*perCPU)(ptrOf(percpuAddr())) }

func pcpuOf(c int) *perCPU {
	return (*perCPU)(ptrOf(uintptr(bi.PerCPUBase) + uintptr(c)*boot.PerCPUSize))
}

// hypercall2 sets two argument words and exits to the monitor (~46 µs).
func hypercall2(port uint16, arg uint32, a0, a1 uint64) {
	pc := pcpu()
	pc.hcArgs[0] = a0
	pc.hcArgs[1] = a1
	outl(port, arg)
}

// Time. The TSC is readable at CPL 3 and runs at a rate the monitor
// measured (KVM_GET_TSC_KHZ); ns = (tsc - boot) * mult >> 32.
var (
	bootTSC  uint64
	tscMult  uint64
	bootUnix int64
)

func initClock() {
	bootTSC = bi.BootTSC
	tscMult = bi.TSCMult
	bootUnix = int64(bi.BootUnixNano)
}

// nanotime is monotonic nanoseconds since boot.
func nanotime() int64 {
	hi, lo := bits.Mul64(rdtsc()-bootTSC, tscMult)
	return int64(hi<<32 | lo>>32)
}

func realtime() int64 { return bootUnix + nanotime() }

// Console output for kernel diagnostics, without allocation.
func kprint(s string) {
	if len(s) == 0 {
		return
	}
	hypercall2(boot.HCWrite, 2, uint64(uintptr(unsafe.Pointer(unsafe.StringData(s)))), uint64(len(s)))
}

func kprintNum(prefix string, v uint64) {
	var buf [24]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	kprint(prefix)
	hypercall2(boot.HCWrite, 2, uint64(uintptr(unsafe.Pointer(&buf[i]))), uint64(len(buf)-i))
}

// spinlock is a test-and-test-and-set lock. Kernel critical sections are
// short and the holder cannot be preempted (the tick is deferred while
// PC_INKERNEL is set), so spinning is bounded.
type spinlock struct{ v atomic.Uint32 }

func (l *spinlock) lock() {
	for !l.v.CompareAndSwap(0, 1) {
		for l.v.Load() != 0 {
			cpuPause()
		}
	}
}

func (l *spinlock) unlock() { l.v.Store(0) }

// Stats are read by the monitor from guest memory at exit (symbol
// kernel.stats), so the kernel never has to format them.
type kstats struct {
	Syscalls        [512]uint64
	Unknown         uint64
	Switches        uint64
	Preempts        uint64
	Halts           uint64
	Kicks           uint64
	Wakeups         uint64
	SignalsSent     uint64
	FramesUsed      uint64
	PTWrites        uint64
	Faults          uint64
	PageFaults      uint64 // resolved by demand paging
	SignalsFault    uint64 // CPU exceptions delivered as signals
	Shootdowns      uint64 // TLB shootdowns requested (all vCPUs flush)
	FramesReclaimed uint64 // 4 KiB frames returned by munmap/MADV_DONTNEED
	PFRetries       uint64 // page faults re-executed because CR2 was unusable
	IRQs            uint64 // device interrupts handled (waiters woken)
	DoorbellExits   uint64 // doorbells delivered by an exit of their own (HCNotify)
	DoorbellHalts   uint64 // doorbells delivered by a halt
	PFDecoded       uint64 // page faults resolved at the address decoded from the instruction (faultaddr.go)
	PFDecodeMisses  uint64 // decoded addresses that did not resolve the fault (CR2 read after all)
}

var stats kstats

// Entries keeps the assembly entry points alive through the linker's dead
// code elimination: only the monitor jumps to them. kmain references it.
var Entries = [...]func(){syscallEntry, tickEntry, apEntry, resume, vdsoClockGettime, vdsoGettimeofday, kcallEntry, callSyscallEntry,
	fault0, fault1, fault2, fault3, fault4, fault5, fault6, fault7,
	fault8, fault9, fault10, fault11, fault12, fault13, fault14, fault15,
	fault16, fault17, fault18, fault19, fault20, fault21, fault22, fault23,
	fault24, fault25, fault26, fault27, fault28, fault29, fault30, fault31}

// Keep is called by kmain so that Entries (and stats) stay linked.
func Keep() int {
	n := 0
	for _, f := range Entries {
		if f != nil {
			n++
		}
	}
	if stats.Unknown != 0 {
		n++
	}
	return n
}

// faultCommon is the fault stubs' shared body (entry_amd64.s); only they
// jump to it.
func faultCommon()

func fault0()
func fault1()
func fault2()
func fault3()
func fault4()
func fault5()
func fault6()
func fault7()
func fault8()
func fault9()
func fault10()
func fault11()
func fault12()
func fault13()
func fault14()
func fault15()
func fault16()
func fault17()
func fault18()
func fault19()
func fault20()
func fault21()
func fault22()
func fault23()
func fault24()
func fault25()
func fault26()
func fault27()
func fault28()
func fault29()
func fault30()
func fault31()
