// Kernel entry and exit paths.
//
// Everything here runs at CPL 3 in the program's address space (DESIGN §1.3)
// and may run at any instant of the program's execution, so:
//   - on entry the program's registers are saved, before anything else,
//     into the running thread's trap frame (PC_CURFRAME), or for faults into
//     the per-CPU fault frame;
//   - PC_INKERNEL is set first and cleared last: while it is set, or while
//     RIP is inside one of these functions, the monitor defers the
//     preemption tick (it cannot be masked: cli/sti fault under PVM);
//   - kernel Go code runs on this CPU's kernel stack with FS pointing at the
//     kernel's TLS, whose g is a stand-in carrying only stack bounds;
//   - return to the program is always IRETQ, which restores RIP, RSP and
//     RFLAGS at once (measured ~0.2 µs under PVM).
// Offsets mirror kernel/boot; TestLayout checks them.

#include "textflag.h"

#define PC_SCRATCH   0x10
#define PC_CURFRAME  0x18
#define PC_KSTACK    0x20
#define PC_KFS       0x28
#define PC_INKERNEL  0x30
#define PC_FAULTFRAME 0x100
#define PC_FAULTUSER 0xa8
#define PRIVOP_ADDR 0x284000
#define PRIVOP_END 0x285000
#define HC_PRIVOPFAULT 0x1b

#define TF_RAX 0
#define TF_RBX 8
#define TF_RCX 16
#define TF_RDX 24
#define TF_RSI 32
#define TF_RDI 40
#define TF_RBP 48
#define TF_R8 56
#define TF_R9 64
#define TF_R10 72
#define TF_R11 80
#define TF_R12 88
#define TF_R13 96
#define TF_R14 104
#define TF_R15 112
#define TF_RIP 120
#define TF_RSP 128
#define TF_RFLAGS 136
#define TF_FSBASE 144
#define TF_KIND 152
#define TF_VECTOR 160
#define TF_ERROR 168
#define TF_XSAVE 1024

#define SEL_UDATA 0x2b
#define SEL_UCODE 0x33

// SAVE_GPRS_BUT_DI stores every general register except DI into the frame at DI.
#define SAVE_GPRS_BUT_DI \
	MOVQ AX, TF_RAX(DI); \
	MOVQ BX, TF_RBX(DI); \
	MOVQ CX, TF_RCX(DI); \
	MOVQ DX, TF_RDX(DI); \
	MOVQ SI, TF_RSI(DI); \
	MOVQ BP, TF_RBP(DI); \
	MOVQ R8, TF_R8(DI); \
	MOVQ R9, TF_R9(DI); \
	MOVQ R10, TF_R10(DI); \
	MOVQ R11, TF_R11(DI); \
	MOVQ R12, TF_R12(DI); \
	MOVQ R13, TF_R13(DI); \
	MOVQ R14, TF_R14(DI); \
	MOVQ R15, TF_R15(DI)

// syscallEntry is LSTAR. SYSCALL left the program's RIP in CX and RFLAGS in
// R11; under PVM it did not change privilege, so SP is still the program's.
TEXT ·syscallEntry(SB),NOSPLIT|NOFRAME,$0
	MOVQ $1, PC_INKERNEL(GS)
	MOVQ DI, PC_SCRATCH(GS)
	MOVQ PC_CURFRAME(GS), DI
	SAVE_GPRS_BUT_DI
	MOVQ PC_SCRATCH(GS), AX
	MOVQ AX, TF_RDI(DI)
	MOVQ CX, TF_RIP(DI)
	MOVQ R11, TF_RFLAGS(DI)
	MOVQ SP, TF_RSP(DI)
	RDFSBASEQ AX
	MOVQ AX, TF_FSBASE(DI)
	MOVQ $0, TF_KIND(DI)
	MOVQ $2, TF_ERROR(DI) // length of the entering instruction (SYSCALL)
	MOVQ PC_KFS(GS), AX
	WRFSBASEQ AX
	MOVQ PC_KSTACK(GS), SP
	CALL ·syscallTrap(SB)
	JMP ·resume(SB)

// callSyscallEntry is the same system-call entry reached by a CALL
// instead of SYSCALL: the monitor rewrites the Go runtime's
// "MOV …; SYSCALL" sites into "CALL trampoline" at load time (vmm/patch.go),
// the trampoline re-executes the MOV and jumps here. The return address on
// the stack is where the program resumes; the CALL is 5 bytes, which a
// restarted system call backs up over (TF_ERROR). Saves the ~1.8 µs that
// SYSCALL costs under PVM.
TEXT ·callSyscallEntry(SB),NOSPLIT|NOFRAME,$0
	MOVQ $1, PC_INKERNEL(GS)
	MOVQ DI, PC_SCRATCH(GS)
	MOVQ PC_CURFRAME(GS), DI
	SAVE_GPRS_BUT_DI
	MOVQ PC_SCRATCH(GS), AX
	MOVQ AX, TF_RDI(DI)
	MOVQ 0(SP), AX
	MOVQ AX, TF_RIP(DI)
	LEAQ 8(SP), AX
	MOVQ AX, TF_RSP(DI)
	PUSHFQ
	POPQ AX
	MOVQ AX, TF_RFLAGS(DI)
	RDFSBASEQ AX
	MOVQ AX, TF_FSBASE(DI)
	MOVQ $0, TF_KIND(DI)
	MOVQ $5, TF_ERROR(DI)
	MOVQ PC_KFS(GS), AX
	WRFSBASEQ AX
	MOVQ PC_KSTACK(GS), SP
	CALL ·syscallTrap(SB)
	JMP ·resume(SB)

// tickEntry is where the monitor sends a vCPU for the preemption tick. It
// has pushed an interrupt frame (RIP, CS, RFLAGS, RSP, SS) on the IST stack,
// exactly as the CPU would for an external interrupt. The program may be
// anywhere, so its vector state is saved too.
TEXT ·tickEntry(SB),NOSPLIT|NOFRAME,$0
	MOVQ $1, PC_INKERNEL(GS)
	MOVQ DI, PC_SCRATCH(GS)
	MOVQ PC_CURFRAME(GS), DI
	SAVE_GPRS_BUT_DI
	MOVQ PC_SCRATCH(GS), AX
	MOVQ AX, TF_RDI(DI)
	MOVQ 0(SP), AX
	MOVQ AX, TF_RIP(DI)
	MOVQ 16(SP), AX
	MOVQ AX, TF_RFLAGS(DI)
	MOVQ 24(SP), AX
	MOVQ AX, TF_RSP(DI)
	RDFSBASEQ AX
	MOVQ AX, TF_FSBASE(DI)
	MOVQ $1, TF_KIND(DI)
	MOVL $7, AX
	XORL DX, DX
	XSAVE64 TF_XSAVE(DI)
	MOVQ PC_KFS(GS), AX
	WRFSBASEQ AX
	MOVQ PC_KSTACK(GS), SP
	CALL ·tickTrap(SB)
	JMP ·resume(SB)

// apEntry is where the monitor starts every vCPU but the first, on its
// kernel stack with kernel FS: it idles until there is a thread to run.
TEXT ·apEntry(SB),NOSPLIT|NOFRAME,$0
	MOVQ $1, PC_INKERNEL(GS)
	CALL ·idleTrap(SB)
	JMP ·resume(SB)

// resume returns to the thread whose frame PC_CURFRAME names.
TEXT ·resume(SB),NOSPLIT|NOFRAME,$0
	MOVQ PC_CURFRAME(GS), DI
	MOVQ TF_FSBASE(DI), AX
	WRFSBASEQ AX
	CMPQ TF_KIND(DI), $0
	JEQ  gprs
	MOVL $7, AX
	XORL DX, DX
	XRSTOR64 TF_XSAVE(DI)
gprs:
	MOVQ PC_KSTACK(GS), SP
	PUSHQ $SEL_UDATA
	PUSHQ TF_RSP(DI)
	PUSHQ TF_RFLAGS(DI)
	PUSHQ $SEL_UCODE
	PUSHQ TF_RIP(DI)
	MOVQ TF_RAX(DI), AX
	MOVQ TF_RBX(DI), BX
	MOVQ TF_RCX(DI), CX
	MOVQ TF_RDX(DI), DX
	MOVQ TF_RSI(DI), SI
	// BP is the program's, not a frame pointer of ours: it is restored
	// like any register (the read below tells vet's framepointer check so).
	MOVQ BP, PC_SCRATCH(GS)
	MOVQ TF_RBP(DI), BP
	MOVQ TF_R8(DI), R8
	MOVQ TF_R9(DI), R9
	MOVQ TF_R10(DI), R10
	MOVQ TF_R11(DI), R11
	MOVQ TF_R12(DI), R12
	MOVQ TF_R13(DI), R13
	MOVQ TF_R14(DI), R14
	MOVQ TF_R15(DI), R15
	MOVQ TF_RDI(DI), DI
	MOVQ $0, PC_INKERNEL(GS)
	IRETQ

// faultCommon: the CPU delivered an exception through a DPL 3 gate onto
// IST1; the per-vector stub pushed the vector (and a zero error code where
// the CPU pushes none). Stack: vector, error, RIP, CS, RFLAGS, RSP, SS.
// A fault in the program is saved, with its vector state, into the running
// thread's frame, so that the kernel can resolve it (demand paging) and
// resume the thread. A fault inside the kernel goes to the per-CPU fault
// frame instead, so it does not overwrite the interrupted thread's frame;
// it is always fatal. PC_FAULTUSER tells faultTrap which it was.
//
// An exception raised inside the monitor's CPL 0 stub page (vmm/privop.go)
// is the monitor's, not the program's or the kernel's: the vCPU's real
// state is held by the monitor, which puts it back and retries. It is
// reported before anything is saved, so no per-CPU state changes.
//
// Until PC_INKERNEL is set below, only its RIP tells the monitor that a
// tick must wait: a global symbol, so that it lies within the range of
// kernel.*.abi0 entry code the monitor defers ticks in (vmm/vmm.go). As a
// file-local symbol (faultCommon<>) the linker placed it before that
// range; a tick there pushed its frame over the exception's on IST1 and
// tickEntry saved this code's registers over the program's in the
// thread's frame (issue 8: corrupted contexts, endless fault loops).
TEXT ·faultCommon(SB),NOSPLIT|NOFRAME,$0
	CMPQ 16(SP), $PRIVOP_ADDR
	JB notprivop
	CMPQ 16(SP), $PRIVOP_END
	JAE notprivop
	MOVQ 0(SP), AX
	MOVW $HC_PRIVOPFAULT, DX
	OUTL
	JMP -1(PC)
notprivop:
	MOVQ DI, PC_SCRATCH(GS)
	CMPQ PC_INKERNEL(GS), $0
	JNE kernelfault
	MOVQ PC_CURFRAME(GS), DI
	MOVQ $1, PC_FAULTUSER(GS)
	JMP save
kernelfault:
	MOVQ 0(GS), DI
	ADDQ $PC_FAULTFRAME, DI
	MOVQ $0, PC_FAULTUSER(GS)
save:
	SAVE_GPRS_BUT_DI
	MOVQ PC_SCRATCH(GS), AX
	MOVQ AX, TF_RDI(DI)
	MOVQ 0(SP), AX
	MOVQ AX, TF_VECTOR(DI)
	MOVQ 8(SP), AX
	MOVQ AX, TF_ERROR(DI)
	MOVQ 16(SP), AX
	MOVQ AX, TF_RIP(DI)
	MOVQ 32(SP), AX
	MOVQ AX, TF_RFLAGS(DI)
	MOVQ 40(SP), AX
	MOVQ AX, TF_RSP(DI)
	RDFSBASEQ AX
	MOVQ AX, TF_FSBASE(DI)
	MOVQ $1, TF_KIND(DI)
	CMPQ PC_FAULTUSER(GS), $0
	JEQ kernelstack
	MOVL $7, AX
	XORL DX, DX
	XSAVE64 TF_XSAVE(DI)
kernelstack:
	MOVQ $1, PC_INKERNEL(GS)
	MOVQ PC_KFS(GS), AX
	WRFSBASEQ AX
	MOVQ PC_KSTACK(GS), SP
	CALL ·faultTrap(SB)
	JMP ·resume(SB)

// outl is a hypercall: OUT to port with a 32-bit argument.
TEXT ·outl(SB),NOSPLIT,$0-8
	MOVW port+0(FP), DX
	MOVL arg+4(FP), AX
	OUTL
	RET

// percpuAddr returns this CPU's per-CPU block.
TEXT ·percpuAddr(SB),NOSPLIT,$0-8
	MOVQ 0(GS), AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·rdtsc(SB),NOSPLIT,$0-8
	RDTSC
	SHLQ $32, DX
	ORQ DX, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·rdrand(SB),NOSPLIT,$0-9
	RDRANDQ AX
	SETCS ret1+8(FP)
	MOVQ AX, ret+0(FP)
	RET

TEXT ·cpuPause(SB),NOSPLIT,$0
	PAUSE
	RET
TEXT ·fault0(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $0
	JMP ·faultCommon(SB)

TEXT ·fault1(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $1
	JMP ·faultCommon(SB)

TEXT ·fault2(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $2
	JMP ·faultCommon(SB)

TEXT ·fault3(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $3
	JMP ·faultCommon(SB)

TEXT ·fault4(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $4
	JMP ·faultCommon(SB)

TEXT ·fault5(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $5
	JMP ·faultCommon(SB)

TEXT ·fault6(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $6
	JMP ·faultCommon(SB)

TEXT ·fault7(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $7
	JMP ·faultCommon(SB)

TEXT ·fault8(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $8
	JMP ·faultCommon(SB)

TEXT ·fault9(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $9
	JMP ·faultCommon(SB)

TEXT ·fault10(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $10
	JMP ·faultCommon(SB)

TEXT ·fault11(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $11
	JMP ·faultCommon(SB)

TEXT ·fault12(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $12
	JMP ·faultCommon(SB)

TEXT ·fault13(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $13
	JMP ·faultCommon(SB)

TEXT ·fault14(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $14
	JMP ·faultCommon(SB)

TEXT ·fault15(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $15
	JMP ·faultCommon(SB)

TEXT ·fault16(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $16
	JMP ·faultCommon(SB)

TEXT ·fault17(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $17
	JMP ·faultCommon(SB)

TEXT ·fault18(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $18
	JMP ·faultCommon(SB)

TEXT ·fault19(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $19
	JMP ·faultCommon(SB)

TEXT ·fault20(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $20
	JMP ·faultCommon(SB)

TEXT ·fault21(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $21
	JMP ·faultCommon(SB)

TEXT ·fault22(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $22
	JMP ·faultCommon(SB)

TEXT ·fault23(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $23
	JMP ·faultCommon(SB)

TEXT ·fault24(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $24
	JMP ·faultCommon(SB)

TEXT ·fault25(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $25
	JMP ·faultCommon(SB)

TEXT ·fault26(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $26
	JMP ·faultCommon(SB)

TEXT ·fault27(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $27
	JMP ·faultCommon(SB)

TEXT ·fault28(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $28
	JMP ·faultCommon(SB)

TEXT ·fault29(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $29
	JMP ·faultCommon(SB)

TEXT ·fault30(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $30
	JMP ·faultCommon(SB)

TEXT ·fault31(SB),NOSPLIT|NOFRAME,$0
	PUSHQ $0
	PUSHQ $31
	JMP ·faultCommon(SB)


// vdsoClockGettime is __vdso_clock_gettime (C ABI: DI = clock id, SI =
// *timespec; may clobber AX CX DX SI DI R8-R11). It runs in the program's
// context, not the kernel's: it only reads the TSC and the boot page, so
// time.Now costs no kernel entry.
#define BOOTINFO 0x280000

// NS_SINCE_BOOT leaves in AX the nanoseconds since boot, from the TSC and
// the boot page at R9: (tsc - BootTSC) * TSCMult >> 32. Clobbers DX.
#define NS_SINCE_BOOT \
	RDTSC; \
	SHLQ $32, DX; \
	ORQ DX, AX; \
	SUBQ 64(R9), AX; \
	MULQ 104(R9); \
	SHRQ $32, AX; \
	SHLQ $32, DX; \
	ORQ DX, AX

TEXT ·vdsoClockGettime(SB),NOSPLIT|NOFRAME,$0
	MOVQ SI, R8
	MOVQ $BOOTINFO, R9
	NS_SINCE_BOOT
	CMPQ DI, $0            // CLOCK_REALTIME
	JEQ real
	CMPQ DI, $5            // CLOCK_REALTIME_COARSE
	JEQ real
	CMPQ DI, $8            // CLOCK_REALTIME_ALARM
	JNE split
real:
	ADDQ 72(R9), AX        // BootUnixNano
split:
	XORL DX, DX
	MOVQ $1000000000, CX
	DIVQ CX
	MOVQ AX, 0(R8)
	MOVQ DX, 8(R8)
	XORL AX, AX
	RET

// vdsoGettimeofday is __vdso_gettimeofday (DI = *timeval, SI = *timezone).
TEXT ·vdsoGettimeofday(SB),NOSPLIT|NOFRAME,$0
	MOVQ DI, R8
	MOVQ $BOOTINFO, R9
	NS_SINCE_BOOT
	ADDQ 72(R9), AX
	XORL DX, DX
	MOVQ $1000000000, CX
	DIVQ CX
	MOVQ AX, 0(R8)
	MOVQ DX, AX
	XORL DX, DX
	MOVQ $1000, CX
	DIVQ CX
	MOVQ AX, 8(R8)
	XORL AX, AX
	RET

// xsaveTo saves the current vector state (x87, SSE, AVX) at addr (64-byte
// aligned).
TEXT ·xsaveTo(SB),NOSPLIT,$0-8
	MOVQ addr+0(FP), DI
	MOVL $7, AX
	XORL DX, DX
	XSAVE64 (DI)
	RET

// kcallEntry is where kapi/unikernel's kcall stub lands, already on this
// CPU's kernel stack with kernel FS and PC_INKERNEL set (so the tick is
// deferred and the thread cannot migrate). AX = operation, DI, SI, DX =
// arguments; results in AX, BX. Kernel calls cost a function call, not a
// trap: this is DESIGN §1.4's "system calls should cost a function call"
// for the database's own requests.
TEXT ·kcallEntry(SB),NOSPLIT|NOFRAME,$0
	SUBQ $48, SP
	MOVQ AX, 0(SP)
	MOVQ DI, 8(SP)
	MOVQ SI, 16(SP)
	MOVQ DX, 24(SP)
	CALL ·kcall(SB)
	MOVQ 32(SP), AX
	MOVQ 40(SP), BX
	ADDQ $48, SP
	RET
