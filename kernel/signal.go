package kernel

// Signals, as the Go runtime uses them: SIGURG for asynchronous
// preemption (sent by the runtime itself with tgkill), and SIGSEGV, SIGBUS,
// SIGFPE, SIGILL raised by the CPU, which the runtime turns into
// recoverable panics (nil dereference, debug.SetPanicOnFault).
//
// Delivery follows Linux x86-64: on the way back to the program, a pending
// unblocked signal with a handler gets an rt_sigframe (return address =
// sa_restorer, ucontext with the interrupted registers, signal mask and
// alternate-stack settings, siginfo, then the XSAVE area) on the thread's
// alternate stack if SA_ONSTACK asks for it, else below the red zone; the
// thread resumes in the handler with RDI=sig, RSI=&info, RDX=&uc.
// rt_sigreturn restores everything from the (possibly modified) frame.
//
// Constraints: trap context (cpu.go). Handler table and per-thread signal
// state are guarded by klock; delivery touches only the current thread.

import (
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

func xsaveTo(addr uintptr)

const (
	sigILL  = 4
	sigTRAP = 5
	sigBUS  = 7
	sigFPE  = 8
	sigKILL = 9
	sigSEGV = 11
	sigURG  = 23
	sigSTOP = 19

	saSiginfo   = 0x4
	saOnstack   = 0x08000000
	saRestorer  = 0x04000000
	saNodefer   = 0x40000000
	saResethand = 0x80000000

	ssOnstack = 1
	ssDisable = 2

	sigDFL = 0
	sigIGN = 1
)

type sigaction struct {
	handler, flags, restorer, mask uint64
}

var sigactions [2][65]sigaction // per process (thread.proc); guarded by klock

// Per-thread signal state lives in threadHdr: sigPending, sigMask,
// altSP, altSize, altFlags.

func doRtSigaction(proc int32, sig int, act, oact uintptr, size uintptr) int64 {
	if sig < 1 || sig > 64 || size != 8 {
		return -_EINVAL
	}
	if act != 0 && (sig == sigKILL || sig == sigSTOP) {
		return -_EINVAL
	}
	var old sigaction
	if act != 0 {
		if !userRange(act, 32) {
			return -_EFAULT
		}
	}
	if oact != 0 && !userRange(oact, 32) {
		return -_EFAULT
	}
	klock.lock()
	old = sigactions[proc][sig]
	if act != 0 {
		sigactions[proc][sig] = *(*sigaction)(ptrOf(act))
	}
	klock.unlock()
	if oact != 0 {
		*(*sigaction)(ptrOf(oact)) = old
	}
	return 0
}

func doRtSigprocmask(t *thread, how int, set, oset uintptr, size uintptr) int64 {
	if size != 8 {
		return -_EINVAL
	}
	old := t.sigMask
	if set != 0 {
		v := *u64(set)
		v &^= 1<<(sigKILL-1) | 1<<(sigSTOP-1)
		switch how {
		case 0: // SIG_BLOCK
			t.sigMask |= v
		case 1: // SIG_UNBLOCK
			t.sigMask &^= v
		case 2: // SIG_SETMASK
			t.sigMask = v
		default:
			return -_EINVAL
		}
	}
	if oset != 0 {
		*u64(oset) = old
	}
	return 0
}

func doSigaltstack(t *thread, ss, oss uintptr) int64 {
	if oss != 0 {
		if !userRange(oss, 24) {
			return -_EFAULT
		}
		*u64(oss) = t.altSP
		flags := t.altFlags
		if t.altFlags&ssDisable == 0 && onAltStack(t, t.tf.rsp) {
			flags |= ssOnstack
		}
		*i32(oss + 8) = flags
		*u64(oss + 16) = t.altSize
	}
	if ss != 0 {
		if !userRange(ss, 24) {
			return -_EFAULT
		}
		if t.altFlags&ssDisable == 0 && onAltStack(t, t.tf.rsp) {
			return -_EPERM
		}
		flags := *i32(ss + 8)
		if flags&ssDisable != 0 {
			t.altFlags = ssDisable
			t.altSP, t.altSize = 0, 0
		} else {
			t.altSP, t.altSize, t.altFlags = *u64(ss), *u64(ss + 16), 0
		}
	}
	return 0
}

func onAltStack(t *thread, sp uint64) bool {
	return t.altFlags&ssDisable == 0 && t.altSize != 0 && sp-t.altSP < t.altSize
}

// sysTgkill marks sig pending on thread tid and interrupts its wait.
func doTgkill(tid int32, sig int, proc int32) int64 {
	if sig < 0 || sig > 64 {
		return -_EINVAL
	}
	klock.lock()
	defer kunlock()
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state == tFree || (tid != 0 && t.tid != tid) || (tid == 0 && t.proc != proc) {
			continue
		}
		if sig == 0 {
			return 0
		}
		if h := sigactions[t.proc][sig].handler; h == sigIGN || (h == sigDFL && sig == sigURG) {
			return 0 // ignored, or default action "ignore"
		}
		t.sigPending |= 1 << (sig - 1)
		atomic.AddUint64(&stats.SignalsSent, 1)
		if t.state == tBlocked && t.waitKind != wSvc && t.sigMask&(1<<(sig-1)) == 0 {
			wake(i, -_EINTR)
		}
		return 0
	}
	return -3 // ESRCH
}

// deliverSignals runs just before a thread resumes: if one of its pending
// signals is deliverable, the thread resumes in the handler instead.
func deliverSignals(t *thread) {
	if t.sigPending&^t.sigMask == 0 {
		return
	}
	klock.lock()
	var sig int
	var act sigaction
	for s := 1; s <= 64; s++ {
		bit := uint64(1) << (s - 1)
		if t.sigPending&bit != 0 && t.sigMask&bit == 0 {
			t.sigPending &^= bit
			sig, act = s, sigactions[t.proc][s]
			break
		}
	}
	klock.unlock()
	if sig == 0 || act.handler == sigIGN || act.handler == sigDFL {
		return // default actions of the signals the runtime sends: ignore
	}
	setupFrame(t, sig, act, 0, 0, 0, 0)
}

// deliverFault turns a CPU exception in the program into a synchronous
// signal. It reports false if the program has no handler for it (or blocks
// it), in which case the fault is fatal, as for a Linux process.
func deliverFault(t *thread, vector int, errcode, cr2 uint64) bool {
	sig, code := sigSEGV, int32(1) // SEGV_MAPERR
	addr := cr2
	switch vector {
	case 0: // #DE
		sig, code, addr = sigFPE, 1, t.tf.rip // FPE_INTDIV
	case 16, 19:
		sig, code, addr = sigFPE, 0, t.tf.rip
	case 6:
		sig, code, addr = sigILL, 2, t.tf.rip // ILL_ILLOPN
	case 3, 1:
		sig, code, addr = sigTRAP, 1, t.tf.rip
	case 13, 12: // #GP (non-canonical address), #SS
		sig, code, addr = sigSEGV, 0x80, 0 // SI_KERNEL, as Linux reports it
	case 17:
		sig, code, addr = sigBUS, 1, cr2
	case 14:
		if errcode&1 != 0 {
			code = 2 // SEGV_ACCERR
		}
	default:
		return false
	}
	klock.lock()
	act := sigactions[t.proc][sig]
	klock.unlock()
	if act.handler == sigDFL || act.handler == sigIGN || t.sigMask&(1<<(sig-1)) != 0 {
		return false
	}
	setupFrame(t, sig, act, code, addr, uint64(vector), errcode)
	atomic.AddUint64(&stats.SignalsFault, 1)
	return true
}

// Offsets in the rt_sigframe (Linux x86-64).
const (
	sfPretcode = 0
	sfUC       = 8
	ucFlags    = 0
	ucLink     = 8
	ucStack    = 16 // stack_t: sp, flags(int32), size
	ucMcontext = 40 // sigcontext: 23 words + fpstate pointer + 8 reserved
	ucSigmask  = 40 + 256
	sfInfo     = 8 + 304
	sfSize     = sfInfo + 128
	xsaveSize  = boot.ThreadSize - boot.TFXSave
)

// mcontext word indices (Linux's REG_* order).
const (
	rR8 = iota
	rR9
	rR10
	rR11
	rR12
	rR13
	rR14
	rR15
	rRDI
	rRSI
	rRBP
	rRBX
	rRDX
	rRAX
	rRCX
	rRSP
	rRIP
	rEFL
	rCSGSFS
	rERR
	rTRAPNO
	rOLDMASK
	rCR2
	rFPSTATE
)

func setupFrame(t *thread, sig int, act sigaction, code int32, addr, trapno, errcode uint64) {
	tf := &t.tf
	if tf.kind == 0 {
		// Entered by SYSCALL: vector state is dead, but the frame needs a
		// valid XSAVE image for rt_sigreturn to restore.
		xsaveTo(uintptr(unsafe.Pointer(&t.xsave[0])))
		tf.kind = 1
	}
	sp := tf.rsp - 128 // red zone
	if act.flags&saOnstack != 0 && t.altFlags&ssDisable == 0 && t.altSize != 0 && !onAltStack(t, tf.rsp) {
		sp = t.altSP + t.altSize
	}
	sp -= xsaveSize
	sp &^= 63
	fp := sp
	sp -= sfSize
	sp = (sp &^ 15) - 8 // as after a CALL: (sp+8) is 16-byte aligned
	if !userRange(uintptr(sp), uintptr(fp+xsaveSize-sp)) {
		return // no stack to deliver on: the signal is lost
	}
	clear(ubytes(uintptr(sp), sfSize))
	copy(ubytes(uintptr(fp), xsaveSize), t.xsave[:])
	w := func(off uintptr, v uint64) { *u64(uintptr(sp) + off) = v }
	w(sfPretcode, act.restorer)
	uc := uintptr(sfUC)
	w(uc+ucStack, t.altSP)
	*i32(uintptr(sp) + uc + ucStack + 8) = t.altFlags
	w(uc+ucStack+16, t.altSize)
	mc := uc + ucMcontext
	g := [...]uint64{
		rR8: tf.r8, rR9: tf.r9, rR10: tf.r10, rR11: tf.r11, rR12: tf.r12, rR13: tf.r13,
		rR14: tf.r14, rR15: tf.r15, rRDI: tf.rdi, rRSI: tf.rsi, rRBP: tf.rbp, rRBX: tf.rbx,
		rRDX: tf.rdx, rRAX: tf.rax, rRCX: tf.rcx, rRSP: tf.rsp, rRIP: tf.rip, rEFL: tf.rflags,
		rCSGSFS: boot.SelUserCode | boot.SelUserData<<48, rERR: errcode, rTRAPNO: trapno,
		rOLDMASK: t.sigMask, rCR2: addr, rFPSTATE: fp,
	}
	for i, v := range g {
		w(mc+uintptr(i)*8, v)
	}
	w(uc+ucSigmask, t.sigMask)
	info := uintptr(sfInfo)
	*i32(uintptr(sp) + info) = int32(sig)
	*i32(uintptr(sp) + info + 8) = code
	w(info+16, addr)

	if act.flags&saNodefer == 0 {
		t.sigMask |= 1 << (sig - 1)
	}
	t.sigMask |= act.mask
	tf.rsp = sp
	tf.rip = act.handler
	tf.rdi = uint64(sig)
	tf.rsi = sp + uint64(info)
	tf.rdx = sp + uint64(uc)
	tf.rax = 0
	tf.rflags &^= 0x100 | 0x400 // TF, DF
}

// sysRtSigreturn restores the context a handler may have modified.
func doRtSigreturn(t *thread) int64 {
	tf := &t.tf
	sp := uintptr(tf.rsp) - 8 // the handler's RET popped pretcode
	if !userRange(sp, sfSize) {
		return -_EFAULT
	}
	r := func(off uintptr) uint64 { return *u64(sp + off) }
	mc := uintptr(sfUC + ucMcontext)
	g := func(i int) uint64 { return r(mc + uintptr(i)*8) }
	tf.r8, tf.r9, tf.r10, tf.r11 = g(rR8), g(rR9), g(rR10), g(rR11)
	tf.r12, tf.r13, tf.r14, tf.r15 = g(rR12), g(rR13), g(rR14), g(rR15)
	tf.rdi, tf.rsi, tf.rbp, tf.rbx = g(rRDI), g(rRSI), g(rRBP), g(rRBX)
	tf.rdx, tf.rax, tf.rcx, tf.rsp = g(rRDX), g(rRAX), g(rRCX), g(rRSP)
	tf.rip = g(rRIP)
	// Only the arithmetic flags, DF and AC come from the frame.
	const userFlags = 0x0cd5 | 0x40000
	tf.rflags = tf.rflags&^userFlags | g(rEFL)&userFlags | 0x200
	if fp := uintptr(g(rFPSTATE)); fp != 0 && userRange(fp, xsaveSize) {
		copy(t.xsave[:], ubytes(fp, xsaveSize))
	}
	tf.kind = 1
	t.sigMask = r(sfUC+ucSigmask) &^ (1<<(sigKILL-1) | 1<<(sigSTOP-1))
	return noResult
}
