// Package kvm is a thin, allocation-light binding of the Linux /dev/kvm
// ioctl interface: just what CumulusDB's monitor needs to run a 64-bit guest
// with a user-space interrupt controller.
//
// The structures mirror <linux/kvm.h> and <asm/kvm.h> for x86-64 byte for
// byte; their sizes are checked in the package test against the ioctl
// numbers, which encode them.
package kvm

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request numbers for x86-64 (from <linux/kvm.h>).
const (
	kvmGetAPIVersion       = 0xae00
	kvmCreateVM            = 0xae01
	kvmCheckExtension      = 0xae03
	kvmGetVCPUMmapSize     = 0xae04
	kvmGetSupportedCPUID   = 0xc008ae05
	kvmCreateVCPU          = 0xae41
	kvmSetUserMemoryRegion = 0x4020ae46
	kvmRun                 = 0xae80
	kvmGetRegs             = 0x8090ae81
	kvmSetRegs             = 0x4090ae82
	kvmGetSregs            = 0x8138ae83
	kvmSetSregs            = 0x4138ae84
	kvmInterrupt           = 0x4004ae86
	kvmGetMSRs             = 0xc008ae88
	kvmSetMSRs             = 0x4008ae89
	kvmSetCPUID2           = 0x4008ae90
	kvmGetTSCKHz           = 0xaea3
	kvmSetXCRs             = 0x4188aea7
	kvmGetVCPUEvents       = 0x8040ae9f
	kvmSetVCPUEvents       = 0x4040aea0
)

// Exit reasons reported in Run.ExitReason.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// ErrNoKVM is returned by Open when /dev/kvm is missing or not accessible.
var ErrNoKVM = errors.New("kvm: /dev/kvm is not available (no KVM on this host, or no permission; CumulusDB images need a KVM-capable Linux host)")

// ioctlPtr is ioctl with a pointer argument. The argument stays an
// unsafe.Pointer until the system call itself: a uintptr made from a
// pointer and passed through an ordinary function call is invisible to the
// runtime, so if the caller's goroutine stack grew (and moved) on the way
// down, the kernel would read the old stack. That happened: KVM_SET_XCRS
// failed with EINVAL when vmm.Run ran on a fresh goroutine.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if e == unix.EINTR && req != kvmRun {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// ioctl is ioctl with an integer argument (never a pointer: see ioctlPtr).
func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == unix.EINTR && req != kvmRun {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// System is an open /dev/kvm.
type System struct{ fd int }

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("%w: open: %v", ErrNoKVM, err)
		}
		return nil, fmt.Errorf("kvm: open /dev/kvm: %w", err)
	}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil || v != 12 {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: unexpected API version %d (%v)", v, err)
	}
	return &System{fd: fd}, nil
}

// Available reports whether /dev/kvm can be opened, with the reason if not.
func Available() error {
	s, err := Open()
	if err != nil {
		return err
	}
	s.Close()
	return nil
}

// Close releases the /dev/kvm descriptor.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension returns the KVM_CHECK_EXTENSION value for cap.
func (s *System) CheckExtension(cap uintptr) int {
	r, err := ioctl(s.fd, kvmCheckExtension, cap)
	if err != nil {
		return 0
	}
	return int(r)
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function, Index, Flags uint32
	Eax, Ebx, Ecx, Edx     uint32
	_                      [3]uint32
}

type cpuid2 struct {
	n       uint32
	_       uint32
	entries [256]CPUIDEntry
}

// SupportedCPUID returns the CPUID leaves KVM can present to a guest.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	c := new(cpuid2)
	c.n = uint32(len(c.entries))
	if _, err := ioctlPtr(s.fd, kvmGetSupportedCPUID, unsafe.Pointer(c)); err != nil {
		return nil, fmt.Errorf("kvm: get supported cpuid: %w", err)
	}
	return append([]CPUIDEntry(nil), c.entries[:c.n]...), nil
}

// VM is a KVM virtual machine.
type VM struct {
	sys      *System
	fd       int
	mmapSize int
}

// CreateVM creates a virtual machine with no memory and no vCPUs.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: create vm: %w", err)
	}
	sz, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: vcpu mmap size: %w", err)
	}
	return &VM{sys: s, fd: int(fd), mmapSize: int(sz)}, nil
}

// Close releases the VM descriptor (vCPUs must be closed first).
func (vm *VM) Close() error { return unix.Close(vm.fd) }

type userMemoryRegion struct {
	slot, flags               uint32
	guestPhys, size, userAddr uint64
}

// SetMemory maps host memory mem at guest-physical address gpa in slot.
func (vm *VM) SetMemory(slot uint32, gpa uint64, mem []byte) error {
	r := userMemoryRegion{slot: slot, guestPhys: gpa, size: uint64(len(mem)), userAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: set memory region slot %d at %#x (%d bytes): %w", slot, gpa, len(mem), err)
	}
	return nil
}

// VCPU is one virtual CPU. Its methods must be called from the OS thread
// that runs it (the caller locks the goroutine to its thread).
type VCPU struct {
	ID  int
	fd  int
	run []byte
}

// CreateVCPU creates vCPU id and maps its shared kvm_run area.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: create vcpu %d: %w", id, err)
	}
	run, err := unix.Mmap(int(fd), 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: mmap vcpu %d run area: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run}, nil
}

// Close unmaps and closes the vCPU.
func (c *VCPU) Close() error {
	unix.Munmap(c.run)
	return unix.Close(c.fd)
}

// Regs is struct kvm_regs.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment.
type Segment struct {
	Base                         uint64
	Limit                        uint32
	Selector                     uint16
	Type, Present, DPL, DB, S, L uint8
	G, AVL, Unusable, _          uint8
}

// DTable is struct kvm_dtable.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT Segment
	GDT, IDT                        DTable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER, APICBase                  uint64
	InterruptBitmap                 [4]uint64
}

// GetRegs reads the general-purpose registers.
func (c *VCPU) GetRegs(r *Regs) error {
	_, err := ioctlPtr(c.fd, kvmGetRegs, unsafe.Pointer(r))
	return err
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r *Regs) error {
	_, err := ioctlPtr(c.fd, kvmSetRegs, unsafe.Pointer(r))
	return err
}

// GetSregs reads the special registers.
func (c *VCPU) GetSregs(s *Sregs) error {
	_, err := ioctlPtr(c.fd, kvmGetSregs, unsafe.Pointer(s))
	return err
}

// SetSregs writes the special registers.
func (c *VCPU) SetSregs(s *Sregs) error {
	_, err := ioctlPtr(c.fd, kvmSetSregs, unsafe.Pointer(s))
	return err
}

// Events is struct kvm_vcpu_events: an exception, interrupt or NMI that
// KVM has taken on for the guest but not finished delivering. After an
// exit (a signal kicked KVM_RUN out, say) one may still be in flight: KVM
// delivers it on the next entry, with the registers as they are then.
type Events struct {
	ExceptionInjected, ExceptionNr, ExceptionHasErrorCode, ExceptionPending uint8
	ExceptionErrorCode                                                      uint32
	InterruptInjected, InterruptNr, InterruptSoft, InterruptShadow          uint8
	NMIInjected, NMIPending, NMIMasked, _                                   uint8
	SIPIVector                                                              uint32
	Flags                                                                   uint32
	SMI                                                                     [4]uint8
	TripleFaultPending                                                      uint8
	_                                                                       [26]uint8
	ExceptionHasPayload                                                     uint8
	ExceptionPayload                                                        uint64
}

// InFlight reports whether an event is still being delivered: an
// exception or interrupt pending or injected, or an NMI.
func (e *Events) InFlight() bool {
	return e.ExceptionInjected|e.ExceptionPending|e.InterruptInjected|e.NMIInjected|e.NMIPending|e.TripleFaultPending != 0
}

// GetEvents reads the vCPU's in-flight events.
func (c *VCPU) GetEvents(e *Events) error {
	_, err := ioctlPtr(c.fd, kvmGetVCPUEvents, unsafe.Pointer(e))
	return err
}

// SetEvents writes the vCPU's in-flight events (flags select the optional
// parts; 0 sets exception, interrupt and NMI state only).
func (c *VCPU) SetEvents(e *Events) error {
	_, err := ioctlPtr(c.fd, kvmSetVCPUEvents, unsafe.Pointer(e))
	return err
}

// SetCPUID sets the CPUID leaves the guest sees.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	cp := new(cpuid2)
	cp.n = uint32(copy(cp.entries[:], entries))
	_, err := ioctlPtr(c.fd, kvmSetCPUID2, unsafe.Pointer(cp))
	if err != nil {
		return fmt.Errorf("kvm: set cpuid: %w", err)
	}
	return nil
}

type msrEntry struct {
	index uint32
	_     uint32
	data  uint64
}

type msrs struct {
	n       uint32
	_       uint32
	entries [16]msrEntry
}

// SetMSRs writes model-specific registers (index → value).
func (c *VCPU) SetMSRs(m map[uint32]uint64) error {
	var b msrs
	for k, v := range m {
		b.entries[b.n] = msrEntry{index: k, data: v}
		b.n++
	}
	n, err := ioctlPtr(c.fd, kvmSetMSRs, unsafe.Pointer(&b))
	if err != nil {
		return fmt.Errorf("kvm: set msrs: %w", err)
	}
	if uint32(n) != b.n {
		return fmt.Errorf("kvm: set msrs: only %d of %d accepted (entry %#x refused)", n, b.n, b.entries[n].index)
	}
	return nil
}

// GetMSR reads one model-specific register.
func (c *VCPU) GetMSR(index uint32) (uint64, error) {
	var b msrs
	b.n = 1
	b.entries[0].index = index
	n, err := ioctlPtr(c.fd, kvmGetMSRs, unsafe.Pointer(&b))
	if err != nil || n != 1 {
		return 0, fmt.Errorf("kvm: get msr %#x: %v", index, err)
	}
	return b.entries[0].data, nil
}

type xcrs struct {
	n, flags uint32
	xcrs     [16]struct {
		xcr, _ uint32
		value  uint64
	}
	_ [16]uint64
}

// SetXCR0 sets extended control register 0 (the XSAVE feature mask).
func (c *VCPU) SetXCR0(v uint64) error {
	var x xcrs
	x.n = 1
	x.xcrs[0].value = v
	if _, err := ioctlPtr(c.fd, kvmSetXCRs, unsafe.Pointer(&x)); err != nil {
		return fmt.Errorf("kvm: set xcr0=%#x: %w", v, err)
	}
	return nil
}

// TSCKHz returns the guest TSC frequency in kHz.
func (c *VCPU) TSCKHz() (uint64, error) {
	r, err := ioctl(c.fd, kvmGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: get tsc khz: %w", err)
	}
	return uint64(r), nil
}

// Interrupt queues external interrupt vector v (user-space irqchip). It is
// only accepted while Run reports ReadyForInterrupt.
func (c *VCPU) Interrupt(v uint32) error {
	_, err := ioctlPtr(c.fd, kvmInterrupt, unsafe.Pointer(&v))
	return err
}

// Run enters the guest until the next exit. EINTR (a signal kicked the
// thread out) is reported as ExitIntr rather than an error.
func (c *VCPU) Run() (uint32, error) {
	_, err := ioctl(c.fd, kvmRun, 0)
	if err == unix.EINTR {
		return ExitIntr, nil
	}
	if err != nil {
		return 0, fmt.Errorf("kvm: run vcpu %d: %w", c.ID, err)
	}
	return c.ExitReason(), nil
}

// ExitReason is kvm_run.exit_reason.
func (c *VCPU) ExitReason() uint32 { return *(*uint32)(unsafe.Pointer(&c.run[8])) }

// SetRequestInterruptWindow asks KVM to exit as soon as the guest can take
// an interrupt.
func (c *VCPU) SetRequestInterruptWindow(on bool) {
	var b byte
	if on {
		b = 1
	}
	c.run[0] = b
}

// SetImmediateExit makes the next KVM_RUN return at once with EINTR.
func (c *VCPU) SetImmediateExit(on bool) {
	var b byte
	if on {
		b = 1
	}
	c.run[1] = b
}

// ReadyForInterrupt reports kvm_run.ready_for_interrupt_injection.
func (c *VCPU) ReadyForInterrupt() bool { return c.run[12] != 0 }

// IFFlag reports kvm_run.if_flag.
func (c *VCPU) IFFlag() bool { return c.run[13] != 0 }

// IO describes a KVM_EXIT_IO exit.
type IO struct {
	Out   bool
	Size  uint8
	Port  uint16
	Count uint32
	Data  []byte // Size*Count bytes inside the run area
}

// IOExit decodes the current KVM_EXIT_IO exit.
func (c *VCPU) IOExit() IO {
	dir := c.run[32]
	size := c.run[33]
	port := *(*uint16)(unsafe.Pointer(&c.run[34]))
	count := *(*uint32)(unsafe.Pointer(&c.run[36]))
	off := *(*uint64)(unsafe.Pointer(&c.run[40]))
	n := uint64(size) * uint64(count)
	var data []byte
	if off+n <= uint64(len(c.run)) {
		data = c.run[off : off+n]
	}
	return IO{Out: dir == 1, Size: size, Port: port, Count: count, Data: data}
}

// InternalError returns the suberror and data words of a
// KVM_EXIT_INTERNAL_ERROR exit.
func (c *VCPU) InternalError() (uint32, []uint64) {
	sub := *(*uint32)(unsafe.Pointer(&c.run[32]))
	n := *(*uint32)(unsafe.Pointer(&c.run[36]))
	if n > 16 {
		n = 16
	}
	d := make([]uint64, n)
	for i := range d {
		d[i] = *(*uint64)(unsafe.Pointer(&c.run[40+8*i]))
	}
	return sub, d
}

// FailEntryReason returns the hardware reason of a KVM_EXIT_FAIL_ENTRY.
func (c *VCPU) FailEntryReason() uint64 { return *(*uint64)(unsafe.Pointer(&c.run[32])) }

// Path of the KVM device, for messages.
const Path = "/dev/kvm"

// Describe explains a missing KVM in user terms.
func Describe(err error) string {
	if errors.Is(err, ErrNoKVM) {
		if _, statErr := os.Stat(Path); statErr != nil {
			return "cumulus: /dev/kvm does not exist: this host has no KVM (enable virtualization, or load kvm_intel/kvm_amd/kvm_pvm)"
		}
		return "cumulus: cannot open /dev/kvm: " + err.Error() + " (add your user to the kvm group or run as root)"
	}
	return err.Error()
}

// MMIO describes a KVM_EXIT_MMIO exit: an access to guest-physical memory
// that no memory slot backs. For a read, the monitor fills Data before the
// next Run; the guest instruction then completes with it.
type MMIO struct {
	Addr  uint64
	Data  []byte // Len bytes inside the run area
	Write bool
}

// MMIOExit decodes the current KVM_EXIT_MMIO exit.
func (c *VCPU) MMIOExit() MMIO {
	addr := *(*uint64)(unsafe.Pointer(&c.run[32]))
	n := *(*uint32)(unsafe.Pointer(&c.run[48]))
	if n > 8 {
		n = 8
	}
	return MMIO{Addr: addr, Data: c.run[40 : 40+n], Write: c.run[52] != 0}
}
