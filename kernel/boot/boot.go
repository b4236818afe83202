// Package boot is the contract between CumulusDB's monitor (vmm) and the
// guest kernel: the guest-physical memory layout the monitor builds, the
// per-CPU block the kernel finds through GS, the boot-information page, the
// hypercall ports, and the segment selectors.
//
// Both sides compile this package; nothing here runs code. The per-CPU and
// trap-frame offsets are repeated in kernel/entry_amd64.s (#define), and the
// kernel's tests check that the two agree.
//
// Memory model: guest-physical == guest-virtual for all of RAM (an identity
// "direct map" built from 2 MiB pages), except the first 2 MiB, which stay
// unmapped so that nil dereferences fault. Address-space the Go runtime asks
// for with mmap lives above RAM and is mapped by the kernel on demand.
package boot

// Guest-physical layout fixed by the monitor. The ELF image is loaded at its
// own addresses, which for Go's linux/amd64 linker start at 4 MiB.
const (
	PageSize     = 4096
	HugePageSize = 2 << 20

	NullGuardEnd = 2 << 20 // [0, 2 MiB) is never mapped

	PML4Addr      = 0x200000 // root page table
	PDPTAddr      = 0x201000 // covers [0, 512 GiB)
	PDAddr        = 0x202000 // one page directory per GiB of RAM
	MaxRAMGiB     = 64
	BootInfoAddr  = 0x280000
	VDSOAddr      = 0x281000 // hand-built vDSO ELF (one page)
	IDTAddr       = 0x283000
	PrivopAddr    = 0x284000 // CPL 0 stubs the monitor runs for the guest (vmm/privop.go)
	PrivopEnd     = 0x285000
	TrampAddr     = 0x285000 // system-call trampolines for patched sites (vmm/patch.go)
	TrampSize     = 0xb000
	CPUTablesAddr = 0x290000 // per-CPU GDT + TSS (+ I/O bitmap), CPUTablesSize each
	CPUTablesSize = 0x4000
	MaxCPUs       = 32
	ImageMin      = 0x400000 // lowest address an image may load at
)

// Per-CPU kernel memory, allocated by the monitor after the image.
const (
	PerCPUSize      = 0x1000
	KernelStackSize = 128 << 10
	ISTStackSize    = 32 << 10
	ThreadSize      = 0x1000 // one slot of the thread table
	MaxThreads      = 1024
	MainStackSize   = 8 << 20
)

// Offsets inside the per-CPU block (GS base points at it). Keep in sync with
// entry_amd64.s.
const (
	PCSelf       = 0x00  // address of this block
	PCCPU        = 0x08  // vCPU index
	PCScratch    = 0x10  // user RSP at SYSCALL entry
	PCCurFrame   = 0x18  // address of the running thread's trap frame
	PCKStack     = 0x20  // top of this CPU's kernel stack
	PCKFS        = 0x28  // FS base for kernel code (FS:-8 holds the kernel g)
	PCInKernel   = 0x30  // non-zero while kernel code runs: the monitor then defers the tick
	PCTickPend   = 0x38  // set by the monitor when it deferred a tick
	PCHalted     = 0x40  // idle state (IdleBusy, IdleSpinning, IdleHalted): a waker must kick a halted vCPU
	PCHCArgs     = 0x48  // 8 hypercall argument words
	PCBootInfo   = 0x88  // address of the boot-information page
	PCISTTop     = 0x90  // top of the IST stack (the monitor pushes tick frames here)
	PCTicks      = 0x98  // ticks delivered (statistics)
	PCTicksDefer = 0xa0  // ticks deferred
	PCFaultFrame = 0x100 // trap frame of the last fault
	PCKernelG    = 0x800 // the kernel's stand-in g: stack bounds only
	PCKernelTLS  = 0xc00 // kernel FS base; the word before it points to PCKernelG
)

// PCHalted values. A spinning vCPU polls the run queue, the pending
// interrupts and the doorbells by itself, so neither the kernel nor the
// monitor needs to wake it.
const (
	IdleBusy     = 0
	IdleSpinning = 1
	IdleHalted   = 2
)

// Hypercall ports (OUT at CPL 3, permitted by the TSS I/O bitmap; PVM ignores
// IOPL). The 32-bit value written is the first argument; further arguments
// are in the per-CPU hypercall words.
const (
	HCWrite       = 0x10 // arg: fd; words[0]=addr, words[1]=len
	HCExit        = 0x11 // arg: status
	HCHalt        = 0x12 // idle: words[0] = deadline in guest ns (0 = none)
	HCKick        = 0x13 // arg: vCPU to wake
	HCFault       = 0x14 // arg: vector; words[0]=frame address, words[1]=error code, words[2]=in kernel
	HCFlush       = 0x15 // TLB shootdown: every vCPU flushes before this returns
	HCStats       = 0x16 // words[0..]: counters for the monitor's report
	HCDebug       = 0x17 // arg: value to print (diagnostics)
	HCCR2         = 0x18 // words[0] := CR2 (CPL 3 cannot read it)
	HCPrivopDone  = 0x1a // the monitor's CPL 0 stub finished
	HCPrivopFault = 0x1b // arg: vector; the CPU raised it inside the CPL 0 stub page
	HCHostFS      = 0x19 // words[0]=syscall nr, words[1..6]=args → words[0]=result (host shares)
	HCNotify      = 0x1c // arg: device<<16 | queue (NotifyNone: none): a virtqueue notification; also delivers the doorbells
)

// NotifyNone as HCNotify's argument notifies no queue: the call only
// delivers the doorbells (BootInfo.Doorbell).
const NotifyNone = 0xffffffff

// Segment selectors: Linux's layout, because PVM reports CS=0x33 after
// SYSCALL whatever STAR says, so 0x33 must be a 64-bit user code segment.
const (
	SelKernelCode = 0x10
	SelKernelData = 0x18
	SelUser32Code = 0x23
	SelUserData   = 0x2b
	SelUserCode   = 0x33
	SelTSS        = 0x40
	GDTSize       = 0x50
	TSSOffset     = 0x100 // inside the per-CPU tables page
	TSSLimit      = 104 + 8192
)

// Interrupt vectors.
const (
	VecTick = 32 // delivered by the monitor, not through the IDT
)

// BootInfo is the boot-information page (at BootInfoAddr).
type BootInfo struct {
	Magic        uint64
	RAMSize      uint64
	NumCPUs      uint64
	FreeStart    uint64 // first free physical byte (2 MiB aligned)
	FreeEnd      uint64
	PerCPUBase   uint64 // NumCPUs blocks of PerCPUSize
	ThreadsBase  uint64 // MaxThreads slots of ThreadSize
	TSCKHz       uint64
	BootTSC      uint64 // guest TSC when the monitor started the vCPUs
	BootUnixNano uint64 // host wall clock at BootTSC
	ImageEnd     uint64
	MainStackTop uint64
	Flags        uint64
	TSCMult      uint64 // ns = (tsc - BootTSC) * TSCMult >> 32 (read by the vDSO)
	KCallEntry   uint64 // address of the kernel-call entry (kapi/unikernel)

	// Devices the monitor attached (virtio-mmio, see "Devices" below).
	NumDevices uint64
	Devices    [MaxDevices]Device
	// IRQPending has bit i set by the monitor when device i raised an
	// interrupt the kernel has not yet handled; the kernel clears it.
	IRQPending uint64
	// IRQCount[i] counts device i's interrupts: the monitor increments it
	// before it sets the pending bit, and the kernel then wakes every
	// futex waiter on its address. A driver waits with
	// futex(&IRQCount[i], FUTEX_WAIT, seen) after finding no work.
	IRQCount [MaxDevices]uint32

	// The network service (netsvc.go): where its ELF starts and the
	// initial stack the monitor built for it. Zero when the image has none.
	SvcEntry uint64
	SvcStack uint64

	// Doorbells: notifications that may wait a little (FlagDoorbell). A
	// driver rings one by setting bit q of DoorbellQueues[i] (device i,
	// queue q) and then bit i of Doorbell; the monitor, at every exit of
	// any vCPU, swaps both words to zero and notifies each queue, and the
	// kernel makes an exit for them (HCNotify with NotifyNone) only when
	// none comes soon enough (see "Devices" below).
	Doorbell       uint64
	DoorbellQueues [MaxDevices]uint32
}

// Devices: virtio 1.x over MMIO (split queues). Device i's register window
// is at Devices[i].MMIO (MMIOBase + i*MMIOStride), identity-mapped by the
// monitor's page tables and backed by no memory: every access is a VM exit
// that the monitor emulates, so drivers touch registers only to set up and
// to notify, and find completions in shared memory (the used rings).
//
// Notifications (FlagDoorbell) have two cheaper forms than the QueueNotify
// register's MMIO exit (~85 µs under PVM): HCNotify, an OUT any CPL 3 code
// may execute (~50 µs), and the doorbell words in BootInfo, plain memory
// that the kernel delivers when it next exits for its own reasons (an
// idle vCPU halting) or, if the doorbell waits too long, with one
// HCNotify for all of them.
// Queue memory must be guest-physical and contiguous: frames from the
// direct map (VA == PA), e.g. kapi frames.
const (
	MMIOBase   = 0x3fc0000000 // 255 GiB: above any RAM (MaxRAMGiB), below the kernel image
	MMIOStride = 0x1000
	MaxDevices = 16
	MMIOPDAddr = 0x243000 // page directory of the GiB holding the MMIO windows

	VirtioNet   = 1 // Device.ID values: virtio device IDs
	VirtioBlock = 2
)

// Device describes one attached device.
type Device struct {
	ID   uint32   // virtio device ID (VirtioNet, VirtioBlock)
	IRQ  uint32   // index into BootInfo.IRQCount and bit of IRQPending
	MMIO uint64   // guest-physical (== virtual) address of the register window
	Name [16]byte // NUL-padded: "vda", "vdb", … for disks, "eth0" for the network
}

// BootInfo.Flags.
const (
	FlagReclaim  = 1 << 0 // munmap/MADV_DONTNEED return frames (TLB shootdowns)
	FlagDoorbell = 1 << 1 // the monitor serves HCNotify and the doorbells
	// FlagShadowPT: the hypervisor runs shadow page tables (PVM): a write
	// to a live page-table entry above the 4 KiB level (a page directory
	// or higher; KVM never leaves those writable to the guest) is trapped
	// and reaches every vCPU's TLB before the writing instruction
	// completes, so it needs no shootdown of its own.
	FlagShadowPT = 1 << 2
)

// Offset of BootInfo.KCallEntry, read by kapi/unikernel's assembly.
const BIOffKCallEntry = 112

// Kernel-call operations (kapi/unikernel → kernel, see kernel/kcall.go).
const (
	KCFramesAlloc = 1  // a0=order → r0=physical address (== direct-map address), r1=errno
	KCFramesFree  = 2  // a0=address, a1=order → r1=errno
	KCFramesStats = 3  // → r0=free bytes, r1=total bytes
	KCCPU         = 4  // → r0=current vCPU
	KCNop         = 5  // → nothing: measures the call itself
	KCFlushTLB    = 6  // TLB shootdown on every vCPU
	KCSnapCreate  = 7  // a0=address, a1=length (2 MiB aligned) → r0=view address, r1=errno (kernel/snapshot.go)
	KCSnapRelease = 8  // a0=view address → r1=errno
	KCSnapStats   = 9  // a0=address of an mm.SnapCounters to fill → r1=errno
	KCSnapBreak   = 10 // a0=address, a1=length: make the range privately writable now → r1=errno
)

// Offsets in BootInfo read by the vDSO clock (entry_amd64.s).
const (
	BIOffBootTSC  = 64
	BIOffBootUnix = 72
	BIOffTSCMult  = 104
)

// Magic identifies a valid BootInfo.
const Magic = 0x43756d756c757331 // "Cumulus1"

// Trap-frame layout at the start of each thread slot. Keep in sync with
// entry_amd64.s.
const (
	TFRAX    = 0
	TFRBX    = 8
	TFRCX    = 16
	TFRDX    = 24
	TFRSI    = 32
	TFRDI    = 40
	TFRBP    = 48
	TFR8     = 56
	TFR9     = 64
	TFR10    = 72
	TFR11    = 80
	TFR12    = 88
	TFR13    = 96
	TFR14    = 104
	TFR15    = 112
	TFRIP    = 120
	TFRSP    = 128
	TFRFLAGS = 136
	TFFSBase = 144
	TFKind   = 152 // 0: entered by SYSCALL (vector state dead); 1: full (XSAVE valid)
	TFVector = 160
	TFError  = 168
	TFCR2    = 176
	TFXSave  = 1024 // 64-byte aligned XSAVE area, up to 3 KiB
)

// XCR0 features the kernel enables and saves: x87, SSE, AVX. AVX-512 state
// is left disabled so the runtime does not use it.
const XCR0 = 7

// Names of the kernel entry points the monitor looks up in the image's
// symbol table.
const (
	SymPrefix       = "github.com/cumulusdb/cumulus/kernel."
	SymSyscallEntry = SymPrefix + "syscallEntry.abi0"
	SymTickEntry    = SymPrefix + "tickEntry.abi0"
	SymAPEntry      = SymPrefix + "apEntry.abi0"
	SymResume       = SymPrefix + "resume.abi0"
	SymFaultPrefix  = SymPrefix + "fault"
	SymFaultCommon  = SymPrefix + "faultCommon.abi0" // must lie within the entry-code range (vmm defers ticks there)
	SymVDSOClock    = SymPrefix + "vdsoClockGettime.abi0"
	SymVDSOTOD      = SymPrefix + "vdsoGettimeofday.abi0"
	SymKCallEntry   = SymPrefix + "kcallEntry.abi0"
	SymCallSyscall  = SymPrefix + "callSyscallEntry.abi0"
)

// User-mode network behind eth0 (cumulus run -net, -p). The monitor's
// network stack is the gateway; the guest configures itself statically
// with these (there is no DHCP). Guest TCP ports published with -p are
// reached at GuestIP; guest connections to GatewayIP:P reach the host's
// 127.0.0.1:P. The device's MAC (VIRTIO_NET_F_MAC) is GuestMAC.
const (
	GuestIP    = "10.0.2.15"
	GatewayIP  = "10.0.2.2"
	NetPrefix  = 24 // 10.0.2.0/24
	GuestMAC   = "52:54:00:12:34:56"
	GatewayMAC = "52:54:00:12:34:02"
	// NetMTU is the link's IP MTU (VIRTIO_NET_F_MTU); frames are at most
	// NetMTU+14 bytes. The link is memory between two software stacks, so
	// it is as large as IPv4 allows for a 64 KiB buffer (virtio header,
	// Ethernet header and packet): per-frame costs (a copy each way, the
	// stacks' per-segment work, interrupts) are paid per 64 KiB, not per
	// 1.5 KiB. Connections to the host's loopback are TCP streams in the
	// monitor, so no peer ever sees this MTU.
	NetMTU = 65536 - 12 - 14
)
