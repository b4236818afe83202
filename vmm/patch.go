package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"

	"golang.org/x/arch/x86/x86asm"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// System-call site rewriting (DESIGN §1.4, "rewriting the runtime's
// syscall sites into direct calls at image-build time"). Under PVM a
// SYSCALL round trip costs ~1.8 µs; a CALL into the kernel's entry costs a
// function call. The Go runtime enters the kernel from a few dozen
// assembly functions, each ending in "MOV x, y; SYSCALL" (MOVL $SYS_futex,
// AX; or Syscall6's MOVQ BX, DI): those 5+ bytes become "CALL trampoline"
// plus NOPs, and the trampoline replays the MOV and jumps to the kernel's
// callSyscallEntry.
//
// A site is rewritten only when it is provably safe:
//   - the function is decoded from its start, so SYSCALL and the MOV
//     before it are whole instructions (never bytes inside another);
//   - the MOV writes a register from a register, an immediate or memory
//     that is not RIP-relative, so replaying it is harmless, including when
//     a blocked system call restarts from the CALL (RSP-relative loads are
//     replayed with RSP moved back over the return address);
//   - no branch in the function targets the bytes being replaced, other
//     than the MOV itself;
//   - the thread still owns its stack: the CALL pushes a return address,
//     so runtime.exitThread (which hands its stack back before SYS_exit:
//     "we may not even have a stack any more") and any SYS_exit site keep
//     their SYSCALL. Rewriting them let an exiting thread write into a
//     stack already reused by another goroutine.
// Everything else keeps its SYSCALL, which still works.

type patchSite struct {
	movAddr uint64 // start of the MOV; the CALL goes here
	movLen  int
	mov     []byte
	stack   bool // the MOV loads from RSP-relative memory
}

// findSyscallSites decodes the program's functions that contain SYSCALL.
func findSyscallSites(f *elf.File, syms *symtab) ([]patchSite, error) {
	text := f.Section(".text")
	if text == nil {
		return nil, fmt.Errorf("no .text")
	}
	data, err := text.Data()
	if err != nil {
		return nil, err
	}
	var sites []patchSite
	for _, fn := range syms.funcs {
		if fn.Value < text.Addr || fn.Value+fn.Size > text.Addr+uint64(len(data)) || fn.Size == 0 {
			continue
		}
		code := data[fn.Value-text.Addr : fn.Value-text.Addr+fn.Size]
		if !bytes.Contains(code, []byte{0x0f, 0x05}) || stacklessExit(fn.Name) {
			continue
		}
		sites = append(sites, sitesIn(code, fn.Value)...)
	}
	return sites, nil
}

func sitesIn(code []byte, base uint64) []patchSite {
	type insn struct {
		off int
		in  x86asm.Inst
	}
	var insns []insn
	targets := map[uint64]bool{}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			return nil // undecodable: leave the whole function alone
		}
		for _, a := range in.Args {
			if rel, ok := a.(x86asm.Rel); ok {
				targets[base+uint64(off+in.Len)+uint64(int64(rel))] = true
			}
		}
		insns = append(insns, insn{off, in})
		off += in.Len
	}
	var sites []patchSite
	for i := 1; i < len(insns); i++ {
		sc, mv := insns[i], insns[i-1]
		if sc.in.Op != x86asm.SYSCALL || !replayable(mv.in) || mv.in.Len+2 < 5 || loadsExit(mv.in) {
			continue
		}
		if targets[base+uint64(sc.off)] || targets[base+uint64(sc.off)+1] {
			continue // something jumps straight to the SYSCALL
		}
		sites = append(sites, patchSite{movAddr: base + uint64(mv.off), movLen: mv.in.Len,
			mov: append([]byte(nil), code[mv.off:mv.off+mv.in.Len]...), stack: stackRelative(mv.in)})
	}
	return sites
}

// stacklessExit names functions that make a system call after giving
// their stack away.
func stacklessExit(name string) bool {
	return name == "runtime.exitThread" || name == "runtime.exitThread.abi0"
}

// loadsExit reports "MOV $SYS_exit, AX": a thread's last system call, made
// when its stack may already belong to someone else.
func loadsExit(in x86asm.Inst) bool {
	imm, ok := in.Args[1].(x86asm.Imm)
	return ok && imm == 60
}

// replayable: MOV into a register from a register or an immediate, with
// no prefix other than REX.
func replayable(in x86asm.Inst) bool {
	if in.Op != x86asm.MOV {
		return false
	}
	for _, p := range in.Prefix {
		if p == 0 {
			break
		}
		if p&0xf0 != 0x40 { // not a REX prefix (flags in the high bits included)
			return false
		}
	}
	if _, ok := in.Args[0].(x86asm.Reg); !ok {
		return false
	}
	switch a := in.Args[1].(type) {
	case x86asm.Reg, x86asm.Imm:
		return true
	case x86asm.Mem:
		// A load, e.g. the system-call number from the function's
		// argument frame. Replaying it is harmless while the memory is
		// unchanged, which holds for a restart: the thread was parked.
		return a.Base != x86asm.RIP && a.Segment == 0
	}
	return false
}

// stackRelative reports a load addressed from RSP: in the trampoline RSP
// is 8 lower (the CALL pushed its return address), so it is replayed
// between LEAQ 8(SP), SP and LEAQ -8(SP), SP (LEA leaves the flags alone;
// the return address stays in place below SP meanwhile: ticks use the IST
// stack and signals the alternate stack or below the red zone).
func stackRelative(in x86asm.Inst) bool {
	m, ok := in.Args[1].(x86asm.Mem)
	return ok && (m.Base == x86asm.RSP || m.Index == x86asm.RSP)
}

// SyscallSites finds the system-call sites of a program ELF the monitor
// will rewrite, for Manifest.ProgramSites and NetsvcSites.
func SyscallSites(program []byte) ([]uint64, error) {
	f, err := elf.NewFile(bytes.NewReader(program))
	if err != nil {
		return nil, fmt.Errorf("vmm: system-call sites: %w", err)
	}
	syms, err := loadSymtab(f)
	if err != nil {
		return nil, fmt.Errorf("vmm: system-call sites: %w", err)
	}
	sites, err := findSyscallSites(f, syms)
	if err != nil {
		return nil, fmt.Errorf("vmm: system-call sites: %w", err)
	}
	addrs := make([]uint64, len(sites))
	for i, s := range sites {
		addrs[i] = s.movAddr
	}
	return addrs, nil
}

// sitesAt rebuilds the sites found at image build time from the code. It
// checks what one instruction can show (a replayable MOV right before a
// SYSCALL); whether anything jumps between the two was decided when the
// whole function was decoded at build time, from the same bytes. ok is
// false if any address does not fit the code: the caller then decodes.
func sitesAt(f *elf.File, addrs []uint64) (sites []patchSite, ok bool) {
	text := f.Section(".text")
	if text == nil || len(addrs) == 0 {
		return nil, false
	}
	data, err := text.Data()
	if err != nil {
		return nil, false
	}
	for _, a := range addrs {
		if a < text.Addr || a >= text.Addr+uint64(len(data)) {
			return nil, false
		}
		code := data[a-text.Addr:]
		in, err := x86asm.Decode(code, 64)
		if err != nil || in.Len+2 > len(code) || in.Len+2 < 5 || !replayable(in) || loadsExit(in) ||
			code[in.Len] != 0x0f || code[in.Len+1] != 0x05 {
			return nil, false
		}
		sites = append(sites, patchSite{movAddr: a, movLen: in.Len, mov: append([]byte(nil), code[:in.Len]...), stack: stackRelative(in)})
	}
	return sites, true
}

// applySyscallPatches writes the trampolines into [tramp, end) and
// rewrites the given sites of the ELF in guest memory; pa maps the ELF's
// virtual addresses to guest-physical ones. It returns how many sites it
// rewrote.
func (m *machine) applySyscallPatches(sites []patchSite, pa func(uint64) uint64, tramp, end uint64) (int, error) {
	entry, ok := m.kern.byName[boot.SymCallSyscall]
	if !ok {
		return 0, nil // an older kernel: keep SYSCALL
	}
	sort.Slice(sites, func(i, j int) bool { return sites[i].movAddr < sites[j].movAddr })
	n := 0
	for _, s := range sites {
		// Trampoline: MOV (replayed); JMP *0(RIP); .quad entry
		t := make([]byte, 0, 48)
		if s.stack {
			t = append(t, 0x48, 0x8d, 0x64, 0x24, 0x08) // LEAQ 8(SP), SP
		}
		t = append(t, s.mov...)
		if s.stack {
			t = append(t, 0x48, 0x8d, 0x64, 0x24, 0xf8) // LEAQ -8(SP), SP
		}
		t = append(t, 0xff, 0x25, 0, 0, 0, 0)
		t = binary.LittleEndian.AppendUint64(t, entry.Value)
		if tramp+uint64(len(t)) > end {
			break
		}
		rel := int64(tramp) - int64(s.movAddr+5)
		if rel != int64(int32(rel)) {
			continue
		}
		copy(m.mem[pa(tramp):], t)
		site := m.mem[pa(s.movAddr) : pa(s.movAddr)+uint64(s.movLen)+2]
		site[0] = 0xe8 // CALL rel32
		binary.LittleEndian.PutUint32(site[1:], uint32(int32(rel)))
		for i := 5; i < len(site); i++ {
			site[i] = 0x90 // NOP
		}
		tramp = (tramp + uint64(len(t)) + 15) &^ 15
		n++
	}
	return n, nil
}
