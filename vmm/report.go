package vmm

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/kvm"
)

// Failure reports: what a user needs to find the bug without a debugger:
// the exception, where it happened (symbol, file:line), registers, and a
// frame-pointer backtrace (Go keeps RBP chains on amd64).

var vectorNames = map[int]string{
	0: "divide error (#DE)", 1: "debug (#DB)", 3: "breakpoint (#BP)", 4: "overflow (#OF)",
	5: "bound range (#BR)", 6: "invalid opcode (#UD)", 7: "device not available (#NM)",
	8: "double fault (#DF)", 10: "invalid TSS (#TS)", 11: "segment not present (#NP)",
	12: "stack fault (#SS)", 13: "general protection (#GP)", 14: "page fault (#PF)",
	16: "x87 error (#MF)", 17: "alignment check (#AC)", 18: "machine check (#MC)", 19: "SIMD error (#XM)",
}

// signalFor maps an exception to the Linux signal a process would die of,
// so that the exit status reads as a shell expects (128 + signal).
func signalFor(vector int) (int, string) {
	switch vector {
	case 0, 16, 19:
		return 8, "SIGFPE"
	case 6:
		return 4, "SIGILL"
	case 1, 3:
		return 5, "SIGTRAP"
	case 13, 14, 12:
		return 11, "SIGSEGV"
	}
	return 7, "SIGBUS"
}

func (v *vcpu) fault(vector int, frameVA, errcode uint64, inKernel bool) {
	m := v.m
	var s kvm.Sregs
	v.c.GetSregs(&s)
	frame, err := m.readVirt(frameVA, 184)
	var w strings.Builder
	where := "in the program"
	if inKernel {
		where = "in the kernel"
	}
	name := vectorNames[vector]
	if name == "" {
		name = fmt.Sprintf("vector %d", vector)
	}
	sig, signame := signalFor(vector)
	fmt.Fprintf(&w, "cumulus: vCPU %d: %s %s (%s)\n", v.id, name, where, signame)
	if err != nil {
		fmt.Fprintf(&w, "  (fault frame unreadable: %v)\n", err)
	} else {
		r := func(i int) uint64 { return binary.LittleEndian.Uint64(frame[8*i:]) }
		rip, rsp, rbp := r(15), r(16), r(6)
		if vector == 14 {
			access := "read"
			if errcode&2 != 0 {
				access = "write"
			}
			if errcode&16 != 0 {
				access = "instruction fetch"
			}
			state := "unmapped"
			if errcode&1 != 0 {
				state = "protected"
			}
			fmt.Fprintf(&w, "  %s of %s address %#x (error %#x)\n", access, state, s.CR2, errcode)
		} else if errcode != 0 {
			fmt.Fprintf(&w, "  error code %#x\n", errcode)
		}
		fmt.Fprintf(&w, "  at %s\n", m.symbolize(rip))
		names := []string{"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rsp", "rflags", "fsbase"}
		for i, n := range names {
			fmt.Fprintf(&w, "  %-6s 0x%016x", n, r(i))
			if i%4 == 3 {
				w.WriteString("\n")
			}
		}
		w.WriteString("\n")
		m.backtrace(&w, rip, rsp, rbp)
	}
	m.outMu.Lock()
	m.cfg.Stderr.Write([]byte(w.String()))
	m.outMu.Unlock()
	m.stop(Result{ExitCode: 128 + sig, Reason: "fault"})
}

func (m *machine) backtrace(w *strings.Builder, rip, rsp, rbp uint64) {
	w.WriteString("  backtrace:\n")
	fmt.Fprintf(w, "    %#x %s\n", rip, m.symbolize(rip))
	for i := 0; i < 32 && rbp != 0; i++ {
		ret, ok1 := m.read64(rbp + 8)
		next, ok2 := m.read64(rbp)
		if !ok1 || !ok2 || ret == 0 {
			break
		}
		fmt.Fprintf(w, "    %#x %s\n", ret, m.symbolize(ret-1))
		if next <= rbp {
			break
		}
		rbp = next
	}
}

// crash reports an exit the guest cannot have asked for (triple fault,
// internal error), with registers and symbol.
func (v *vcpu) crash(reason uint32) {
	m := v.m
	var r kvm.Regs
	var s kvm.Sregs
	v.c.GetRegs(&r)
	v.c.GetSregs(&s)
	var w strings.Builder
	what := map[uint32]string{kvm.ExitShutdown: "triple fault (shutdown)", kvm.ExitInternalError: "KVM internal error",
		kvm.ExitFailEntry: "VM entry failed", kvm.ExitMMIO: "access to guest-physical memory outside RAM",
		kvm.ExitHLT: "HLT", kvm.ExitException: "exception exit"}[reason]
	if what == "" {
		what = fmt.Sprintf("unexpected exit %d", reason)
	}
	fmt.Fprintf(&w, "cumulus: vCPU %d: %s\n", v.id, what)
	if reason == kvm.ExitInternalError {
		sub, data := v.c.InternalError()
		fmt.Fprintf(&w, "  suberror %d data %x\n", sub, data)
	}
	inK := *m.pc64(v.id, boot.PCInKernel)
	fmt.Fprintf(&w, "  at %s (in kernel: %v)\n", m.symbolize(r.RIP), inK != 0)
	fmt.Fprintf(&w, "  rip %#x rsp %#x rbp %#x rflags %#x cr2 %#x cs %#x\n", r.RIP, r.RSP, r.RBP, r.RFLAGS, s.CR2, s.CS.Selector)
	fmt.Fprintf(&w, "  rax %#x rbx %#x rcx %#x rdx %#x rsi %#x rdi %#x\n", r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI)
	m.backtrace(&w, r.RIP, r.RSP, r.RBP)
	m.outMu.Lock()
	m.cfg.Stderr.Write([]byte(w.String()))
	m.outMu.Unlock()
	m.stop(Result{ExitCode: 1, Reason: "crash"})
}

// reportHang prints where each vCPU is when the timeout fires: each one is
// kicked out of the guest and hands over its registers between exits.
func (m *machine) reportHang() {
	var w strings.Builder
	fmt.Fprintf(&w, "cumulus: timeout after %v; guest still running\n", m.cfg.Timeout)
	for _, v := range m.cpus {
		v.wantSnap.Store(true)
		select {
		case v.kick <- struct{}{}:
		default:
		}
		if tid := v.tid.Load(); tid != 0 {
			unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
		}
	}
	for _, v := range m.cpus {
		halted, inKernel := v.halted.Load(), *m.pc64(v.id, boot.PCInKernel) != 0
		select {
		case r := <-v.snap:
			fmt.Fprintf(&w, "  vCPU %d: rip %#x %s (in kernel: %v)\n", v.id, r.RIP, m.symbolize(r.RIP), inKernel)
			var bt strings.Builder
			m.backtrace(&bt, r.RIP, r.RSP, r.RBP)
			w.WriteString(strings.ReplaceAll(bt.String(), "\n  ", "\n    "))
		case <-time.After(500 * time.Millisecond):
			fmt.Fprintf(&w, "  vCPU %d: no answer (halted=%v, in kernel=%v)\n", v.id, halted, inKernel)
		}
	}
	m.outMu.Lock()
	m.cfg.Stderr.Write([]byte(w.String()))
	m.outMu.Unlock()
}

// lineTable wraps Go's pclntab for file:line symbolisation.
type lineTable struct{ t *gosym.Table }

func newLineTable(f *elf.File) *lineTable {
	sec := f.Section(".gopclntab")
	text := f.Section(".text")
	if sec == nil || text == nil {
		return nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil
	}
	t, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil
	}
	return &lineTable{t}
}

func (l *lineTable) pcToLine(pc uint64) (fn, file string, line int) {
	file, line, f := l.t.PCToLine(pc)
	if f == nil {
		return "", "", 0
	}
	return f.Name, file, line
}
