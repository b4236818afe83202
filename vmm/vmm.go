// Package vmm is CumulusDB's virtual machine monitor: it boots an Image
// (guest kernel + Go program) on /dev/kvm, starting every vCPU directly in
// 64-bit mode at CPL 3 (DESIGN §1.2–1.3), and serves the guest's
// hypercalls: console, exit, halt/kick, fault reports and TLB flushes.
//
// Facts of the PVM hosts this runs on, measured and relied upon here:
// OUT at CPL 3 exits to us (~46 µs) only through the TSS I/O bitmap (IOPL
// is ignored); after SYSCALL the CPU reports CS=0x33 whatever STAR says,
// so the GDT follows Linux's layout; KVM_INTERRUPT does not deliver to a
// CPL 3 guest, so the preemption tick is delivered by this monitor itself:
// it pushes an interrupt frame on the vCPU's IST stack and redirects RIP to
// the kernel's tick entry (unless the kernel is running, or KVM is still
// delivering an exception to the vCPU, in which case the tick is left
// pending for the kernel to take on its way out).
package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/kvm"
)

// Config is how to run an image.
type Config struct {
	CPUs     int           // vCPUs (default 1)
	MemBytes uint64        // guest RAM (default 1 GiB)
	Timeout  time.Duration // 0: none
	Args     []string      // argv, argv[0] included
	Env      []string
	Stdout   io.Writer
	Stderr   io.Writer
	Tick     time.Duration // preemption tick (default 10 ms)
	Log      *slog.Logger
	Shares   []Share // host directories visible in the guest
	// KeepFrames turns frame reclaim off: large discards (munmap,
	// MADV_DONTNEED) are zeroed in place and keep their frames, instead of
	// returning them after a TLB shootdown.
	KeepFrames bool
	// KeepSyscall leaves the program's SYSCALL sites as they are instead
	// of rewriting them into direct calls (for comparisons).
	KeepSyscall bool
	Cwd         string // the guest's initial working directory (default "/")
	// Disks are virtio block devices, in guest order (vda, vdb, …).
	Disks []Disk
	// Net attaches a virtio network device (eth0) behind the monitor's
	// user-mode network; Ports implies it.
	Net   bool
	Ports []PortForward
	// Stop, when closed, stops the machine (Result.Reason "stopped",
	// exit code 0): the guest is not told, like a power-off.
	Stop <-chan struct{}
	// Prealloc backs all of guest RAM with host memory before the first
	// vCPU runs (QEMU's -mem-prealloc). Without it the host allocates and
	// zeroes a page on the guest's first touch, inside whatever the guest
	// was doing: ~0.2 ms per 2 MiB on a plain host, ~8 ms where the host
	// is itself a VM whose memory its hypervisor has not backed yet.
	Prealloc bool
}

// Result is how a run ended.
type Result struct {
	ExitCode int
	Reason   string // "exit", "fault", "timeout", "crash"
	Stats    Stats
}

// Stats are counts from the monitor and the kernel for one run.
type Stats struct {
	Wall              time.Duration
	StartToFirstWrite time.Duration // monitor start → the program's first console write
	Exits             uint64        // all VM exits
	HypercallExits    map[string]uint64
	IntrExits         uint64
	TicksDelivered    uint64
	TicksDeferred     uint64
	TLBFlushes        uint64        // per-vCPU TLB flushes run by the monitor (privop)
	FlushRetries      uint64        // flush stubs PVM refused or faulted, retried
	TicksInFlight     uint64        // ticks deferred because an exception was still being delivered (part of TicksDeferred)
	FlushesInFlight   uint64        // flushes that set an in-flight exception aside and put it back
	DeviceIRQs        uint64        // device interrupts the kernel handled
	Devices           []DeviceStats `json:",omitempty"` // per device (attach.go)
	MMIOExits         uint64        // device register accesses (each a VM exit)
	PatchedSyscalls   int           // SYSCALL sites rewritten into direct calls
	Shootdowns        uint64        // kernel requests to flush every vCPU
	FramesReclaimed   uint64        // 4 KiB frames returned by munmap/MADV_DONTNEED
	PFRetries         uint64        // page faults retried because CR2 read back unusable (PVM)
	PFDecoded         uint64        // page faults resolved at the address decoded from the instruction (no exit for CR2)
	PFDecodeMisses    uint64        // decoded addresses that did not resolve the fault (CR2 read after all)
	Syscalls          uint64        // kernel entries by SYSCALL
	SyscallsByNr      map[int]uint64
	UnknownSyscall    uint64
	Switches          uint64
	Preempts          uint64
	Halts             uint64
	Kicks             uint64
	SignalsSent       uint64
	FramesUsed        uint64
	PTWrites          uint64
	PageFaults        uint64 // demand-paging faults resolved by the kernel
	SignalsFault      uint64 // CPU exceptions delivered to the program as signals
	DoorbellExits     uint64 // doorbells the kernel delivered with an exit of their own (HCNotify)
	DoorbellHalts     uint64 // ... with a halt it made anyway
}

// ErrTimeout is returned when the guest outlived Config.Timeout.
var ErrTimeout = errors.New("vmm: guest did not finish before the timeout")

type machine struct {
	cfg     Config
	mem     []byte
	kvmSys  *kvm.System
	vm      *kvm.VM
	cpus    []*vcpu
	fs      *hostFS
	patched int
	prog    *symtab
	kern    *symtab
	entry   map[string]uint64
	stubLo  uint64
	stubHi  uint64
	kernPA  uint64
	kernEnd uint64
	svcPA   uint64 // network service: physical load address
	svcEnd  uint64 // and its image size (2 MiB aligned), mapped at NetsvcBase
	layout  layout
	outMu   sync.Mutex
	stopped atomic.Bool
	stopCh  chan struct{}
	result  Result
	resMu   sync.Mutex
	start   time.Time
	boot    time.Time // host time at BootTSC: the guest clock's zero
	bootTSC uint64
	firstSC atomic.Int64

	exits, intrExits, ticks, deferred, flushes, flushRetries atomic.Uint64
	eventDefers, flushEvents                                 atomic.Uint64 // ticks deferred / flushes run with a CPU event in flight
	mmioExits, irqs                                          atomic.Uint64
	hcCount                                                  [13]atomic.Uint64
	devs                                                     []attached // devices.go
}

type vcpu struct {
	m         *machine
	id        int
	c         *kvm.VCPU
	tid       atomic.Int32
	kick      chan struct{}
	halted    atomic.Bool
	wantFlush atomic.Bool
	wantSnap  atomic.Bool   // reportHang asks for the registers
	snap      chan kvm.Regs // and gets them here
}

type layout struct {
	imageEnd, perCPU, kstacks, ist, threads, mainStack, freeStart uint64
}

// Run boots img and waits for it to exit.
func Run(img *Image, cfg Config) (Result, error) {
	if cfg.CPUs <= 0 {
		cfg.CPUs = 1
	}
	if cfg.CPUs > boot.MaxCPUs {
		return Result{}, fmt.Errorf("vmm: %d vCPUs requested, at most %d supported", cfg.CPUs, boot.MaxCPUs)
	}
	if cfg.MemBytes == 0 {
		cfg.MemBytes = 1 << 30
	}
	if cfg.MemBytes < 64<<20 || cfg.MemBytes > boot.MaxRAMGiB<<30 {
		return Result{}, fmt.Errorf("vmm: memory %d MiB out of range [64 MiB, %d GiB]", cfg.MemBytes>>20, boot.MaxRAMGiB)
	}
	cfg.MemBytes &^= boot.HugePageSize - 1
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Tick == 0 {
		cfg.Tick = 10 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(cfg.Args) == 0 {
		cfg.Args = []string{img.Manifest.Name}
	}
	m := &machine{cfg: cfg, stopCh: make(chan struct{}), start: time.Now(), fs: newHostFS(cfg.Shares, cfg.Cwd)}
	defer m.close()
	defer m.fs.close()
	if err := m.setup(img); err != nil {
		return Result{}, err
	}
	m.cfg.Log.Debug("vmm: set-up done", "elapsed", time.Since(m.start))
	return m.run()
}

func (m *machine) close() {
	m.closeDevices() // before guest memory goes: device goroutines use it
	for _, c := range m.cpus {
		if c != nil && c.c != nil {
			c.c.Close()
		}
	}
	if m.vm != nil {
		m.vm.Close()
	}
	if m.kvmSys != nil {
		m.kvmSys.Close()
	}
	if m.mem != nil {
		unix.Munmap(m.mem)
	}
}

func align(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func (m *machine) put64(pa uint64, v uint64) { binary.LittleEndian.PutUint64(m.mem[pa:], v) }

func (m *machine) setup(img *Image) error {
	var err error
	if m.kvmSys, err = kvm.Open(); err != nil {
		return err
	}
	if m.vm, err = m.kvmSys.CreateVM(); err != nil {
		return err
	}
	m.mem, err = unix.Mmap(-1, 0, int(m.cfg.MemBytes), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("vmm: allocate %d MiB of guest memory: %w", m.cfg.MemBytes>>20, err)
	}
	// Large host pages let the shadow MMU map guest memory in 2 MiB pieces.
	unix.Madvise(m.mem, unix.MADV_HUGEPAGE)
	if m.cfg.Prealloc {
		t := time.Now()
		if err := prealloc(m.mem); err != nil {
			return fmt.Errorf("vmm: preallocate %d MiB of guest memory: %w", m.cfg.MemBytes>>20, err)
		}
		m.cfg.Log.Info("vmm: guest memory preallocated", "MiB", m.cfg.MemBytes>>20, "elapsed", time.Since(t))
	}
	if err := m.vm.SetMemory(0, 0, m.mem); err != nil {
		return err
	}

	// The program, at its own addresses.
	pf, err := elf.NewFile(bytes.NewReader(img.Program))
	if err != nil {
		return fmt.Errorf("vmm: program: %w", err)
	}
	imageEnd := uint64(0)
	for _, p := range pf.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if p.Vaddr+p.Memsz > m.cfg.MemBytes/2 {
			return fmt.Errorf("vmm: program segment at %#x+%#x does not fit in %d MiB of RAM", p.Vaddr, p.Memsz, m.cfg.MemBytes>>20)
		}
		if _, err := p.ReadAt(m.mem[p.Vaddr:p.Vaddr+p.Filesz], 0); err != nil && err != io.EOF {
			return fmt.Errorf("vmm: load program segment: %w", err)
		}
		imageEnd = max(imageEnd, p.Vaddr+p.Memsz)
	}
	if m.prog, err = loadSymtab(pf); err != nil {
		return fmt.Errorf("vmm: program symbols: %w", err)
	}
	entry := pf.Entry

	// The kernel, physically after the program, virtually at KernelBase.
	kf, err := elf.NewFile(bytes.NewReader(img.Kernel))
	if err != nil {
		return fmt.Errorf("vmm: kernel: %w", err)
	}
	m.kernPA = align(imageEnd, boot.HugePageSize)
	kend := uint64(0)
	for _, p := range kf.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if p.Vaddr < KernelBase || p.Vaddr+p.Memsz > KernelBase+1<<30 {
			return fmt.Errorf("vmm: kernel segment at %#x is outside the kernel window", p.Vaddr)
		}
		pa := m.kernPA + (p.Vaddr - KernelBase)
		if _, err := p.ReadAt(m.mem[pa:pa+p.Filesz], 0); err != nil && err != io.EOF {
			return fmt.Errorf("vmm: load kernel segment: %w", err)
		}
		kend = max(kend, p.Vaddr+p.Memsz-KernelBase)
	}
	m.kernEnd = align(kend, boot.HugePageSize)
	if m.kern, err = loadSymtab(kf); err != nil {
		return fmt.Errorf("vmm: kernel symbols: %w", err)
	}
	m.entry = map[string]uint64{}
	for _, name := range []string{boot.SymSyscallEntry, boot.SymTickEntry, boot.SymAPEntry, boot.SymResume} {
		s, ok := m.kern.byName[name]
		if !ok {
			return fmt.Errorf("vmm: kernel ELF lacks %s: not a CumulusDB kernel", name)
		}
		m.entry[name] = s.Value
	}
	// The kernel's entry code (its assembly: kernel.*.abi0): a tick that
	// finds RIP there waits, as it does while PC_INKERNEL is set. The
	// fault entry runs there before it can set PC_INKERNEL.
	m.stubLo, m.stubHi = ^uint64(0), 0
	for name, s := range m.kern.byName {
		if strings.HasPrefix(name, boot.SymPrefix) && strings.HasSuffix(name, ".abi0") {
			m.stubLo = min(m.stubLo, s.Value)
			m.stubHi = max(m.stubHi, s.Value+s.Size)
		}
	}
	if fc, ok := m.kern.byName[boot.SymFaultCommon]; !ok || fc.Value < m.stubLo || fc.Value+fc.Size > m.stubHi {
		return fmt.Errorf("vmm: kernel ELF: %s missing or outside the entry code [%#x, %#x)", boot.SymFaultCommon, m.stubLo, m.stubHi)
	}
	if m.kern.byName[boot.SymFaultPrefix+"14.abi0"].Value == 0 {
		return fmt.Errorf("vmm: kernel ELF lacks fault entries")
	}

	// The network service, physically after the kernel, virtually at
	// NetsvcBase, followed by its initial stack (identity-mapped).
	afterKernel := m.kernPA + m.kernEnd
	var svcFile *elf.File
	if len(img.Netsvc) > 0 {
		if svcFile, err = m.loadNetsvc(img.Netsvc, afterKernel); err != nil {
			return err
		}
		// One 2 MiB page after its image holds the trampolines of its
		// rewritten system calls (they must lie within ±2 GiB of its code).
		afterKernel = m.svcPA + m.svcEnd + boot.HugePageSize + boot.NetsvcStack
	}

	// Kernel memory after the kernel image.
	n := uint64(m.cfg.CPUs)
	l := &m.layout
	l.imageEnd = imageEnd
	l.perCPU = afterKernel
	l.kstacks = l.perCPU + align(n*boot.PerCPUSize, boot.PageSize)
	l.ist = l.kstacks + n*boot.KernelStackSize
	l.threads = l.ist + n*boot.ISTStackSize
	l.mainStack = l.threads + boot.MaxThreads*boot.ThreadSize
	l.freeStart = align(l.mainStack+boot.MainStackSize, boot.HugePageSize)
	if l.freeStart+64<<20 > m.cfg.MemBytes {
		return fmt.Errorf("vmm: %d MiB of RAM is too little for this image (%d MiB used before the program starts)", m.cfg.MemBytes>>20, l.freeStart>>20)
	}

	m.cfg.Log.Debug("vmm: images loaded", "elapsed", time.Since(m.start))
	m.buildPageTables()
	m.buildCPUTables()
	m.buildPerCPU()
	rsp := m.buildStack(pf, m.layout.mainStack+boot.MainStackSize, m.cfg.Args, m.cfg.Env)
	var svcRSP uint64
	if svcFile != nil {
		svcRSP = m.buildStack(svcFile, m.svcPA+m.svcEnd+boot.HugePageSize+boot.NetsvcStack, []string{"netsvc"}, []string{"GOMAXPROCS=1"})
	}
	m.cfg.Log.Debug("vmm: tables built", "elapsed", time.Since(m.start))

	// vCPUs.
	m.cfg.Log.Debug("vmm: memory ready", "elapsed", time.Since(m.start))
	cpuid, err := m.kvmSys.SupportedCPUID()
	if err != nil {
		return err
	}
	for i := 0; i < m.cfg.CPUs; i++ {
		c, err := m.vm.CreateVCPU(i)
		if err != nil {
			return err
		}
		v := &vcpu{m: m, id: i, c: c, kick: make(chan struct{}, 1), snap: make(chan kvm.Regs, 1)}
		m.cpus = append(m.cpus, v)
		if err := c.SetCPUID(cpuid); err != nil {
			return err
		}
		if err := m.initVCPU(v, entry, rsp); err != nil {
			return fmt.Errorf("vmm: vcpu %d: %w", i, err)
		}
	}
	m.cfg.Log.Debug("vmm: vCPUs created", "elapsed", time.Since(m.start))
	// Boot information, with the TSC as the vCPUs will see it.
	tscKHz, err := m.cpus[0].c.TSCKHz()
	if err != nil {
		return err
	}
	if m.bootTSC, err = m.cpus[0].c.GetMSR(0x10); err != nil {
		return err
	}
	now := time.Now()
	m.boot = now
	biv := boot.BootInfo{
		Magic: boot.Magic, RAMSize: m.cfg.MemBytes, NumCPUs: n,
		FreeStart: l.freeStart, FreeEnd: m.cfg.MemBytes,
		PerCPUBase: l.perCPU, ThreadsBase: l.threads,
		TSCKHz: tscKHz, BootTSC: m.bootTSC, BootUnixNano: uint64(now.UnixNano()),
		ImageEnd: imageEnd, MainStackTop: l.mainStack + boot.MainStackSize,
		TSCMult:    (1_000_000 << 32) / max(tscKHz, 1),
		KCallEntry: m.kern.byName[boot.SymKCallEntry].Value,
		Flags:      reclaimFlag(!m.cfg.KeepFrames) | boot.FlagDoorbell | shadowPTFlag(),
	}
	if svcFile != nil {
		biv.SvcEntry, biv.SvcStack = svcFile.Entry, svcRSP
	}
	if err := m.attachDevices(); err != nil {
		return err
	}
	m.describeDevices(&biv)
	m.mapDevices()
	m.buildVDSO()
	m.installPrivops()
	if !m.cfg.KeepSyscall {
		ident := func(va uint64) uint64 { return va }
		sites, ok := sitesAt(pf, img.Manifest.ProgramSites)
		if !ok {
			if sites, err = findSyscallSites(pf, m.prog); err != nil {
				return fmt.Errorf("vmm: find system-call sites: %w", err)
			}
		}
		if m.patched, err = m.applySyscallPatches(sites, ident, boot.TrampAddr, boot.TrampAddr+boot.TrampSize); err != nil {
			return fmt.Errorf("vmm: rewrite system-call sites: %w", err)
		}
		if svcFile != nil {
			// The network service's too: its system calls are most of
			// the kernel entries of a socket request. Decoding its 7 MB
			// of code took ~15 ms of every boot; images carry the sites.
			sites, ok := sitesAt(svcFile, img.Manifest.NetsvcSites)
			if !ok {
				syms, err := loadSymtab(svcFile)
				if err != nil {
					return fmt.Errorf("vmm: network service symbols: %w", err)
				}
				if sites, err = findSyscallSites(svcFile, syms); err != nil {
					return fmt.Errorf("vmm: find the network service's system-call sites: %w", err)
				}
			}
			svcPA := func(va uint64) uint64 { return m.svcPA + va - boot.NetsvcBase }
			lo := boot.NetsvcBase + m.svcEnd
			n, err := m.applySyscallPatches(sites, svcPA, lo, lo+boot.HugePageSize)
			if err != nil {
				return fmt.Errorf("vmm: rewrite the network service's system-call sites: %w", err)
			}
			m.patched += n
		}
	}
	copy(m.mem[boot.BootInfoAddr:], unsafe.Slice((*byte)(unsafe.Pointer(&biv)), unsafe.Sizeof(biv)))
	return nil
}

const (
	ptP    = 1
	ptW    = 2
	ptU    = 4
	ptPS   = 0x80
	ptFlag = ptP | ptW | ptU
)

// buildPageTables identity-maps RAM above the null guard with 2 MiB pages
// and maps the kernel image at KernelBase.
func (m *machine) buildPageTables() {
	m.put64(boot.PML4Addr, boot.PDPTAddr|ptFlag)
	gib := (m.cfg.MemBytes + 1<<30 - 1) >> 30
	for g := uint64(0); g < gib; g++ {
		pd := uint64(boot.PDAddr) + g*boot.PageSize
		m.put64(boot.PDPTAddr+8*g, pd|ptFlag)
		for j := uint64(0); j < 512; j++ {
			pa := g<<30 + j<<21
			if pa < boot.NullGuardEnd || pa >= m.cfg.MemBytes {
				continue
			}
			m.put64(pd+8*j, pa|ptFlag|ptPS)
		}
	}
	if m.svcEnd != 0 {
		m.put64(boot.PDPTAddr+8*(boot.NetsvcBase>>30), boot.NetsvcPDAddr|ptFlag)
		for off := uint64(0); off < m.svcEnd+boot.HugePageSize; off += boot.HugePageSize {
			m.put64(boot.NetsvcPDAddr+8*(off>>21), (m.svcPA+off)|ptFlag|ptPS)
		}
	}
	kpd := uint64(boot.PDAddr) + boot.MaxRAMGiB*boot.PageSize
	m.put64(boot.PDPTAddr+8*(KernelBase>>30), kpd|ptFlag)
	for off := uint64(0); off < m.kernEnd; off += boot.HugePageSize {
		m.put64(kpd+8*(off>>21), (m.kernPA+off)|ptFlag|ptPS)
	}
}

func (m *machine) istTop(i int) uint64 {
	return m.layout.ist + uint64(i+1)*boot.ISTStackSize - 64
}

func (m *machine) kstackTop(i int) uint64 {
	return m.layout.kstacks + uint64(i+1)*boot.KernelStackSize - 64
}

func (m *machine) perCPU(i int) uint64 { return m.layout.perCPU + uint64(i)*boot.PerCPUSize }

// buildCPUTables writes each vCPU's GDT and TSS and the shared IDT.
func (m *machine) buildCPUTables() {
	for i := 0; i < m.cfg.CPUs; i++ {
		base := uint64(boot.CPUTablesAddr + i*boot.CPUTablesSize)
		m.put64(base+boot.SelKernelCode&^7, 0x00209a0000000000)
		m.put64(base+boot.SelKernelData&^7, 0x0000920000000000)
		m.put64(base+boot.SelUser32Code&^7, 0x00cffa000000ffff)
		m.put64(base+boot.SelUserData&^7, 0x00cff2000000ffff)
		m.put64(base+boot.SelUserCode&^7, 0x0020fa0000000000)
		tss := base + boot.TSSOffset
		lim := uint64(boot.TSSLimit)
		m.put64(base+boot.SelTSS, lim&0xffff|(tss&0xffffff)<<16|0x89<<40|(lim>>16&0xf)<<48|(tss>>24&0xff)<<56)
		m.put64(base+boot.SelTSS+8, tss>>32)
		m.put64(tss+0x24, m.istTop(i)) // IST1
		binary.LittleEndian.PutUint16(m.mem[tss+0x66:], 104)
		// I/O bitmap: all zero (every port allowed: hypercalls), then the
		// terminating byte.
		m.mem[tss+104+8192] = 0xff
	}
	for v := 0; v < 32; v++ {
		h := m.kern.byName[fmt.Sprintf("%s%d.abi0", boot.SymFaultPrefix, v)].Value
		off := uint64(boot.IDTAddr + v*16)
		m.put64(off, h&0xffff|boot.SelUserCode<<16|1<<32|0xee<<40|(h>>16&0xffff)<<48)
		m.put64(off+8, h>>32)
	}
}

func (m *machine) buildPerCPU() {
	for i := 0; i < m.cfg.CPUs; i++ {
		pc := m.perCPU(i)
		m.put64(pc+boot.PCSelf, pc)
		m.put64(pc+boot.PCCPU, uint64(i))
		if i == 0 {
			m.put64(pc+boot.PCCurFrame, m.layout.threads)
		}
		m.put64(pc+boot.PCKStack, m.kstackTop(i))
		m.put64(pc+boot.PCKFS, pc+boot.PCKernelTLS)
		m.put64(pc+boot.PCBootInfo, boot.BootInfoAddr)
		m.put64(pc+boot.PCISTTop, m.istTop(i))
		m.put64(pc+boot.PCKernelTLS-8, pc+boot.PCKernelG)
		lo := m.layout.kstacks + uint64(i)*boot.KernelStackSize
		g := pc + boot.PCKernelG
		m.put64(g+0, lo)                // g.stack.lo
		m.put64(g+8, m.kstackTop(i)+64) // g.stack.hi
		m.put64(g+16, lo+16<<10)        // g.stackguard0
		m.put64(g+24, lo+16<<10)        // g.stackguard1
	}
}

// buildStack writes the Linux initial process stack: argc, argv, envp and
// the auxiliary vector the Go runtime reads (AT_PAGESZ, AT_RANDOM, AT_PHDR).
func (m *machine) buildStack(pf *elf.File, top uint64, args, env []string) uint64 {
	sp := top
	pushStr := func(s string) uint64 {
		sp -= uint64(len(s) + 1)
		copy(m.mem[sp:], s)
		m.mem[sp+uint64(len(s))] = 0
		return sp
	}
	var argv, envp []uint64
	for _, a := range args {
		argv = append(argv, pushStr(a))
	}
	for _, e := range env {
		envp = append(envp, pushStr(e))
	}
	sp -= 16
	random := sp
	rnd := make([]byte, 16)
	unix.Getrandom(rnd, 0)
	copy(m.mem[random:], rnd)
	platform := pushStr("x86_64")
	sp &^= 15
	var phdr uint64
	for _, p := range pf.Progs {
		if p.Type == elf.PT_PHDR {
			phdr = p.Vaddr
		}
	}
	aux := [][2]uint64{{6, boot.PageSize}, {25, random}, {15, platform}, {23, 0}, {11, 0}, {12, 0}, {13, 0}, {14, 0}}
	if phdr != 0 {
		aux = append(aux, [2]uint64{3, phdr}, [2]uint64{4, 56}, [2]uint64{5, uint64(len(pf.Progs))})
	}
	aux = append(aux, [2]uint64{9, pf.Entry}, [2]uint64{33, boot.VDSOAddr}, [2]uint64{0, 0})
	words := []uint64{uint64(len(argv))}
	words = append(words, argv...)
	words = append(words, 0)
	words = append(words, envp...)
	words = append(words, 0)
	for _, a := range aux {
		words = append(words, a[0], a[1])
	}
	sp -= uint64(len(words)) * 8
	sp &^= 15
	for i, w := range words {
		m.put64(sp+uint64(i)*8, w)
	}
	return sp
}

func (m *machine) initVCPU(v *vcpu, entry, rsp uint64) error {
	var s kvm.Sregs
	if err := v.c.GetSregs(&s); err != nil {
		return err
	}
	code := kvm.Segment{Selector: boot.SelUserCode, Type: 11, Present: 1, DPL: 3, S: 1, L: 1, G: 1, Limit: 0xffffffff}
	data := kvm.Segment{Selector: boot.SelUserData, Type: 3, Present: 1, DPL: 3, S: 1, DB: 1, G: 1, Limit: 0xffffffff}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.GS.Base = m.perCPU(v.id)
	if v.id != 0 {
		s.FS.Base = m.perCPU(v.id) + boot.PCKernelTLS
	}
	tables := uint64(boot.CPUTablesAddr + v.id*boot.CPUTablesSize)
	s.TR = kvm.Segment{Base: tables + boot.TSSOffset, Limit: boot.TSSLimit, Selector: boot.SelTSS, Type: 11, Present: 1}
	s.LDT = kvm.Segment{Unusable: 1}
	s.GDT = kvm.DTable{Base: tables, Limit: boot.GDTSize - 1}
	s.IDT = kvm.DTable{Base: boot.IDTAddr, Limit: 32*16 - 1}
	// PG WP NE ET MP PE, without AM: alignment checking is of no use to
	// Go programs, and under load PVM was seen handing a CPL 3 guest
	// RFLAGS with AC set (from no instruction of ours), which with AM
	// turned an unaligned load in the runtime into #AC (SIGBUS).
	s.CR0 = 0x80010033
	s.CR3 = boot.PML4Addr
	s.CR4 = 0x20 | 0x200 | 0x400 | 0x10000 | 0x40000 // PAE OSFXSR OSXMMEXCPT FSGSBASE OSXSAVE
	s.EFER = 0x1 | 0x100 | 0x400 | 0x800             // SCE LME LMA NXE
	if err := v.c.SetSregs(&s); err != nil {
		return err
	}
	if err := v.c.SetXCR0(boot.XCR0); err != nil {
		return err
	}
	if err := v.c.SetMSRs(map[uint32]uint64{
		0xc0000082: m.entry[boot.SymSyscallEntry],                             // LSTAR
		0xc0000081: uint64(boot.SelUser32Code-3)<<48 | boot.SelKernelCode<<32, // STAR
		0xc0000084: 0x40700,                                                   // SFMASK: TF DF AC
	}); err != nil {
		return err
	}
	r := kvm.Regs{RFLAGS: 0x202}
	if v.id == 0 {
		r.RIP, r.RSP = entry, rsp
	} else {
		r.RIP, r.RSP = m.entry[boot.SymAPEntry], m.kstackTop(v.id)
	}
	return v.c.SetRegs(&r)
}

func (m *machine) run() (Result, error) {
	vcpuProcs(len(m.cpus))
	var wg sync.WaitGroup
	errs := make(chan error, len(m.cpus))
	for _, v := range m.cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := v.loop(); err != nil {
				errs <- err
				m.stop(Result{ExitCode: 1, Reason: "crash"})
			}
		}()
	}
	tick := time.NewTicker(m.cfg.Tick)
	defer tick.Stop()
	var timeout <-chan time.Time
	if m.cfg.Timeout > 0 {
		t := time.NewTimer(m.cfg.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timedOut := false
	stopReq := m.cfg.Stop
loop:
	for {
		select {
		case <-done:
			break loop
		case <-m.stopCh:
			m.kickAll()
			<-done
			break loop
		case <-stopReq:
			stopReq = nil
			m.stop(Result{ExitCode: 0, Reason: "stopped"})
		case <-timeout:
			timedOut = true
			m.reportHang()
			m.stop(Result{ExitCode: 124, Reason: "timeout"})
		case <-tick.C:
			for _, v := range m.cpus {
				if !v.halted.Load() {
					if tid := v.tid.Load(); tid != 0 {
						unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
					}
				}
			}
		}
	}
	res := m.result
	res.Stats = m.collectStats()
	if err := m.closeDevices(); err != nil {
		fmt.Fprintf(m.cfg.Stderr, "cumulus: %v\n", err)
		if res.ExitCode == 0 {
			res.ExitCode = 1
		}
	}
	close(errs)
	for err := range errs {
		return res, err
	}
	if timedOut {
		return res, ErrTimeout
	}
	return res, nil
}

func (m *machine) stop(r Result) {
	m.resMu.Lock()
	if !m.stopped.Load() {
		m.result = r
		m.stopped.Store(true)
		close(m.stopCh)
	}
	m.resMu.Unlock()
	m.kickAll()
}

func (m *machine) kickAll() {
	for _, v := range m.cpus {
		v.c.SetImmediateExit(true)
		if tid := v.tid.Load(); tid != 0 {
			unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
		}
	}
}

func (v *vcpu) loop() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v.tid.Store(int32(unix.Gettid()))
	m := v.m
	for !m.stopped.Load() {
		if err := v.serviceFlush(); err != nil {
			return err
		}
		if v.wantSnap.Swap(false) {
			var r kvm.Regs
			if v.c.GetRegs(&r) == nil {
				select {
				case v.snap <- r:
				default:
				}
			}
		}
		reason, err := v.c.Run()
		if err != nil {
			return err
		}
		m.exits.Add(1)
		// Any exit delivers the doorbells the guest rang (kernel/boot): one
		// the kernel makes for them alone is then one fewer.
		m.doorbells()
		switch reason {
		case kvm.ExitIO:
			io := v.c.IOExit()
			var arg uint32
			if len(io.Data) >= 4 {
				arg = binary.LittleEndian.Uint32(io.Data)
			}
			v.hypercall(io.Port, arg)
		case kvm.ExitIntr:
			m.intrExits.Add(1)
			if v.wantSnap.Load() {
				continue // the registers as the program left them (top of the loop)
			}
			if !m.stopped.Load() {
				v.deliverTick()
			}
		case kvm.ExitMMIO:
			if mm := v.c.MMIOExit(); !v.mmioExit(mm.Addr, mm.Data, mm.Write) {
				v.crash(reason)
				return nil
			}
		case kvm.ExitShutdown, kvm.ExitInternalError, kvm.ExitFailEntry, kvm.ExitException, kvm.ExitHLT, kvm.ExitUnknown:
			v.crash(reason)
			return nil
		default:
			v.crash(reason)
			return nil
		}
	}
	return nil
}

func (m *machine) pc64(cpu int, off uint64) *uint64 {
	return (*uint64)(unsafe.Pointer(&m.mem[m.perCPU(cpu)+off]))
}

// deliverTick emulates an external interrupt (see the package comment).
func (v *vcpu) deliverTick() {
	m := v.m
	if atomic.LoadUint64(m.pc64(v.id, boot.PCInKernel)) != 0 {
		atomic.StoreUint64(m.pc64(v.id, boot.PCTickPend), 1)
		m.deferred.Add(1)
		return
	}
	var r kvm.Regs
	if err := v.c.GetRegs(&r); err != nil {
		return
	}
	if r.RIP >= m.stubLo && r.RIP < m.stubHi {
		atomic.StoreUint64(m.pc64(v.id, boot.PCTickPend), 1)
		m.deferred.Add(1)
		return
	}
	// An exception KVM has taken on but not delivered yet (the signal
	// that kicked KVM_RUN out came while a page fault was being injected:
	// under snapshots, a copy-on-write write fault) would be delivered on
	// the next entry against the registers set here, not the program's:
	// its frame would land on the same IST1 slots as the tick's, and the
	// thread's saved context would become RIP=tickEntry, RSP=the IST
	// stack; tickEntry, resumed later, then reads whatever frame that
	// stack holds by then (another thread's RIP and RSP). The exception is
	// about to enter the kernel anyway: leave the tick pending for it.
	var ev kvm.Events
	if err := v.c.GetEvents(&ev); err != nil || ev.InFlight() {
		atomic.StoreUint64(m.pc64(v.id, boot.PCTickPend), 1)
		m.deferred.Add(1)
		m.eventDefers.Add(1)
		return
	}
	top := m.istTop(v.id) - 40
	m.put64(top, r.RIP)
	m.put64(top+8, boot.SelUserCode)
	m.put64(top+16, r.RFLAGS)
	m.put64(top+24, r.RSP)
	m.put64(top+32, boot.SelUserData)
	r.RSP = top
	r.RIP = m.entry[boot.SymTickEntry]
	if err := v.c.SetRegs(&r); err == nil {
		m.ticks.Add(1)
	}
}

func (v *vcpu) hcArg(i int) uint64 { return *v.m.pc64(v.id, boot.PCHCArgs+uint64(8*i)) }

func (v *vcpu) hypercall(port uint16, arg uint32) {
	m := v.m
	if int(port-boot.HCWrite) < len(m.hcCount) {
		m.hcCount[port-boot.HCWrite].Add(1)
	}
	switch port {
	case boot.HCWrite:
		m.firstSC.CompareAndSwap(0, int64(time.Since(m.start)))
		buf, err := m.readVirt(v.hcArg(0), v.hcArg(1))
		if err != nil {
			m.cfg.Log.Warn("console write from unmapped memory", "addr", v.hcArg(0), "err", err)
			return
		}
		m.outMu.Lock()
		if arg == 2 {
			m.cfg.Stderr.Write(buf)
		} else {
			m.cfg.Stdout.Write(buf)
		}
		m.outMu.Unlock()
	case boot.HCExit:
		m.stop(Result{ExitCode: int(int32(arg)), Reason: "exit"})
	case boot.HCHalt:
		v.halt(int64(v.hcArg(0)))
	case boot.HCKick:
		if int(arg) < len(m.cpus) {
			select {
			case m.cpus[arg].kick <- struct{}{}:
			default:
			}
		}
	case boot.HCFault:
		v.fault(int(arg), v.hcArg(0), v.hcArg(1), v.hcArg(2) != 0)
	case boot.HCFlush:
		if err := v.shootdown(); err != nil {
			fmt.Fprintf(m.cfg.Stderr, "cumulus: %v\n", err)
			m.stop(Result{ExitCode: 1, Reason: "crash"})
		}
	case boot.HCHostFS:
		v.hostFSCall()
	case boot.HCNotify:
		if arg != boot.NotifyNone {
			m.notify(int(arg>>16), arg&0xffff)
		}
	case boot.HCCR2:
		var s kvm.Sregs
		if v.c.GetSregs(&s) == nil {
			*m.pc64(v.id, boot.PCHCArgs) = s.CR2
		}
	case boot.HCDebug:
		fmt.Fprintf(m.cfg.Stderr, "cumulus: vCPU %d debug %#x\n", v.id, arg)
	default:
		fmt.Fprintf(m.cfg.Stderr, "cumulus: vCPU %d: unknown hypercall port %#x\n", v.id, port)
	}
}

// halt parks an idle vCPU until a kick, its next timer, or the end.
func (v *vcpu) halt(deadlineNS int64) {
	m := v.m
	v.halted.Store(true)
	defer v.halted.Store(false)
	// An interrupt raised since the kernel last looked (by this very exit,
	// say: a doorbell's frames answered at once) found us not yet halted
	// and kicked nobody.
	bi := (*boot.BootInfo)(unsafe.Pointer(&m.mem[boot.BootInfoAddr]))
	if atomic.LoadUint64(&bi.IRQPending) != 0 {
		return
	}
	var timer <-chan time.Time
	if deadlineNS > 0 {
		d := time.Duration(deadlineNS) - m.guestNow()
		if d <= 0 {
			return
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-v.kick:
	case <-timer:
	case <-m.stopCh:
	}
}

// loadNetsvc loads the network service's ELF at physical address pa.
func (m *machine) loadNetsvc(data []byte, pa uint64) (*elf.File, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("vmm: network service: %w", err)
	}
	m.svcPA = pa
	end := uint64(0)
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if p.Vaddr < boot.NetsvcBase || p.Vaddr+p.Memsz > boot.NetsvcBase+1<<30 {
			return nil, fmt.Errorf("vmm: network service segment at %#x is outside its window", p.Vaddr)
		}
		dst := pa + (p.Vaddr - boot.NetsvcBase)
		if dst+p.Memsz > m.cfg.MemBytes {
			return nil, fmt.Errorf("vmm: network service does not fit in %d MiB of RAM", m.cfg.MemBytes>>20)
		}
		if _, err := p.ReadAt(m.mem[dst:dst+p.Filesz], 0); err != nil && err != io.EOF {
			return nil, fmt.Errorf("vmm: load network service segment: %w", err)
		}
		end = max(end, p.Vaddr+p.Memsz-boot.NetsvcBase)
	}
	m.svcEnd = align(end, boot.HugePageSize)
	return f, nil
}

// guestNow approximates the guest's monotonic clock (ns since BootTSC).
func (m *machine) guestNow() time.Duration { return time.Since(m.boot) }

// readVirt copies guest-virtual memory by walking the guest's page tables.
func (m *machine) readVirt(va, n uint64) ([]byte, error) {
	if n > 64<<20 {
		return nil, fmt.Errorf("length %d too large", n)
	}
	out := make([]byte, 0, n)
	for n > 0 {
		pa, size, ok := m.translate(va)
		if !ok {
			return nil, fmt.Errorf("address %#x not mapped", va)
		}
		chunk := size - va&(size-1)
		if chunk > n {
			chunk = n
		}
		if pa+chunk > uint64(len(m.mem)) {
			return nil, fmt.Errorf("address %#x maps outside RAM", va)
		}
		out = append(out, m.mem[pa:pa+chunk]...)
		va += chunk
		n -= chunk
	}
	return out, nil
}

func (m *machine) translate(va uint64) (pa, size uint64, ok bool) {
	table := uint64(boot.PML4Addr)
	for level := 3; level >= 0; level-- {
		idx := va >> (12 + 9*uint(level)) & 511
		if table+8*idx+8 > uint64(len(m.mem)) {
			return 0, 0, false
		}
		e := binary.LittleEndian.Uint64(m.mem[table+8*idx:])
		if e&ptP == 0 {
			return 0, 0, false
		}
		addr := e & 0x000f_ffff_ffff_f000
		if level == 0 {
			return addr | va&0xfff, 4096, true
		}
		if e&ptPS != 0 && level == 1 {
			return addr&^(1<<21-1) | va&(1<<21-1), 1 << 21, true
		}
		table = addr
	}
	return 0, 0, false
}

func (m *machine) read64(va uint64) (uint64, bool) {
	b, err := m.readVirt(va, 8)
	if err != nil {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b), true
}

func (m *machine) collectStats() Stats {
	s := Stats{
		Wall:              time.Since(m.start),
		StartToFirstWrite: time.Duration(m.firstSC.Load()),
		Exits:             m.exits.Load(),
		IntrExits:         m.intrExits.Load(),
		TicksDelivered:    m.ticks.Load(),
		TicksDeferred:     m.deferred.Load(),
		TLBFlushes:        m.flushes.Load(),
		FlushRetries:      m.flushRetries.Load(),
		TicksInFlight:     m.eventDefers.Load(),
		FlushesInFlight:   m.flushEvents.Load(),
		MMIOExits:         m.mmioExits.Load(),
		PatchedSyscalls:   m.patched,
		HypercallExits:    map[string]uint64{},
		SyscallsByNr:      map[int]uint64{},
	}
	for i, name := range []string{"write", "exit", "halt", "kick", "fault", "flush", "stats", "debug", "cr2", "hostfs", "privop", "privopfault", "notify"} {
		if c := m.hcCount[i].Load(); c != 0 {
			s.HypercallExits[name] = c
		}
	}
	if sym, ok := m.kern.byName[boot.SymPrefix+"stats"]; ok {
		pa := m.kernPA + sym.Value - KernelBase
		w := func(i int) uint64 { return binary.LittleEndian.Uint64(m.mem[pa+uint64(8*i):]) }
		for nr := 0; nr < 512; nr++ {
			if c := w(nr); c != 0 {
				s.SyscallsByNr[nr] = c
				s.Syscalls += c
			}
		}
		s.UnknownSyscall = w(512)
		s.Switches, s.Preempts, s.Halts, s.Kicks = w(513), w(514), w(515), w(516)
		s.SignalsSent, s.FramesUsed, s.PTWrites = w(518), w(519), w(520)
		s.PageFaults, s.SignalsFault = w(522), w(523)
		s.Shootdowns, s.FramesReclaimed = w(524), w(525)
		s.PFRetries, s.DeviceIRQs = w(526), w(527)
		s.DoorbellExits, s.DoorbellHalts = w(528), w(529)
		s.PFDecoded, s.PFDecodeMisses = w(530), w(531)
	}
	s.Devices = m.deviceStats()
	return s
}

// symtab symbolises addresses of one ELF.
type symtab struct {
	byName    map[string]elf.Symbol
	funcs     []elf.Symbol // sorted by address
	lines     *lineTable
	linesOnce func() *lineTable
	linesMu   sync.Mutex
}

func loadSymtab(f *elf.File) (*symtab, error) {
	syms, err := f.Symbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, err
	}
	// Stripped programs (go test links with -s) still carry .gopclntab,
	// which is all symbolisation needs.
	t := &symtab{byName: make(map[string]elf.Symbol, len(syms))}
	for _, s := range syms {
		t.byName[s.Name] = s
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC || s.Section < elf.SHN_LORESERVE && s.Size > 0 && elf.ST_TYPE(s.Info) != elf.STT_OBJECT {
			t.funcs = append(t.funcs, s)
		}
	}
	sort.Slice(t.funcs, func(i, j int) bool { return t.funcs[i].Value < t.funcs[j].Value })
	// The line table is only needed for fault reports: build it then, not
	// on every boot.
	t.linesOnce = func() *lineTable { return newLineTable(f) }
	return t, nil
}

// lookup returns "func (file:line)" for pc, or "" if unknown.
func (t *symtab) lookup(pc uint64) string {
	if t == nil {
		return ""
	}
	t.linesMu.Lock()
	if t.lines == nil && t.linesOnce != nil {
		t.lines, t.linesOnce = t.linesOnce(), nil
	}
	t.linesMu.Unlock()
	if t.lines != nil {
		if fn, file, line := t.lines.pcToLine(pc); fn != "" {
			return fmt.Sprintf("%s (%s:%d)", fn, file, line)
		}
	}
	i := sort.Search(len(t.funcs), func(i int) bool { return t.funcs[i].Value > pc }) - 1
	if i >= 0 && pc < t.funcs[i].Value+max(t.funcs[i].Size, 1) {
		return fmt.Sprintf("%s+%#x", t.funcs[i].Name, pc-t.funcs[i].Value)
	}
	return ""
}

func (m *machine) symbolize(pc uint64) string {
	var s string
	if pc >= KernelBase && pc < KernelBase+1<<30 {
		s = m.kern.lookup(pc)
		if s != "" {
			s = "[kernel] " + s
		}
	} else {
		s = m.prog.lookup(pc)
	}
	if s == "" {
		return "?"
	}
	return s
}

// shadowPTFlag is boot.FlagShadowPT where /dev/kvm is PVM, whose shadow
// MMU write-protects the guest's page directories and applies each write
// to them on every vCPU (zapping the shadow entries and flushing remote
// TLBs before the write completes).
func shadowPTFlag() uint64 {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return boot.FlagShadowPT
	}
	return 0
}

func reclaimFlag(on bool) uint64 {
	if on {
		return boot.FlagReclaim
	}
	return 0
}
