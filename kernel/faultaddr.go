package kernel

// The address of a page fault without reading CR2.
//
// Constraints: trap context (cpu.go): no allocation, no blocking; reads
// only the faulting instruction's own bytes, which the CPU has just
// fetched, so they are mapped.
//
// Why. CPL 3 cannot read CR2, so every page fault used to cost a VM exit
// (HCCR2, ~46 µs under PVM) on top of its delivery (~18 µs): a third of a
// demand-paging fault and a sixth of a copy-on-write break (snapshot.go).
// The address is also what the instruction computed: for the memory
// operand forms programs fault on (ModRM/SIB addressing, string stores,
// pushes and calls), base + index<<scale + displacement (+ FS base), RDI,
// or RSP-8 from the saved registers gives it.
//
// Safety. A wrong answer must cost at most a retry. The decoder knows a
// whitelist of opcodes and gives up on everything else (RIP-relative
// operands, GS, gathers, instructions with two memory operands but
// string moves). The caller resolves the decoded address and resumes; an
// instruction whose operand crosses into the next page, or any decoding
// mistake, faults again at the same RIP with the same decoded address,
// and that second fault reads CR2 (t.pfRIP/t.pfAddr in trap.go).

// regOf returns register n (the ModRM/SIB numbering: rax, rcx, rdx,
// rbx, rsp, rbp, rsi, rdi, r8-r15) from the saved frame.
func regOf(tf *trapFrame, n byte) uint64 {
	switch n {
	case 0:
		return tf.rax
	case 1:
		return tf.rcx
	case 2:
		return tf.rdx
	case 3:
		return tf.rbx
	case 4:
		return tf.rsp
	case 5:
		return tf.rbp
	case 6:
		return tf.rsi
	case 7:
		return tf.rdi
	case 8:
		return tf.r8
	case 9:
		return tf.r9
	case 10:
		return tf.r10
	case 11:
		return tf.r11
	case 12:
		return tf.r12
	case 13:
		return tf.r13
	case 14:
		return tf.r14
	}
	return tf.r15
}

// modrm1 and modrm2 mark the opcodes of the one-byte and 0F maps that
// take a ModRM byte and may access memory through it (a bit per opcode;
// constants, since package initialisers do not run in the kernel).
//
// One-byte map: the ALU ops (00-3B), MOVSXD 63, IMUL 69/6B, group 1,
// TEST, XCHG, MOV 80-8C, MOV sreg/POP r/m 8E-8F, shifts C0-C1/D0-D3, MOV
// C6-C7, x87 D8-DF, group 3 F6-F7, INC/DEC/group 5 FE-FF. 0F map: SSE
// moves and arithmetic 10-17/28-2F/50-76/78-7F, CMOVcc 40-4F, SETcc
// 90-9F, BT/SHLD/BTS/SHRD A3-A5/AB-AD, IMUL/CMPXCHG/LSS/BTR/LFS/LGS/
// MOVZX AF-B7, group 8/BTC/BSF/BSR/MOVSX BA-BF, XADD/CMPPS/MOVNTI/
// PINSRW/PEXTRW/SHUFPS/group 9 C0-C7, MMX/SSE2 D0-FE.
var (
	modrm1 = [4]uint64{0xf0f0f0f0f0f0f0f, 0xa0800000000, 0xdfff, 0xc0c00000ff0f00c3}
	modrm2 = [4]uint64{0xff0000ff0000, 0xff7fffffffffffff, 0xfcffb838ffff0000, 0x7fffffffffff00ff}
)

func hasOp(t *[4]uint64, op byte) bool { return t[op/64]&(1<<(op%64)) != 0 }

func codeAt(p, i uintptr) byte { return *(*byte)(ptrOf(p + i)) }

// disp32 is the sign-extended 32-bit displacement at p+i.
func disp32(p, i uintptr) uint64 {
	return uint64(int64(int32(uint32(codeAt(p, i)) | uint32(codeAt(p, i+1))<<8 | uint32(codeAt(p, i+2))<<16 | uint32(codeAt(p, i+3))<<24)))
}

// faultAddr decodes the instruction at tf.rip and returns the address
// its memory operand names, for a data access (write says which kind).
// ok is false where it cannot tell.
func faultAddr(tf *trapFrame, write bool) (addr uintptr, ok bool) {
	p := uintptr(tf.rip)
	if p < 4096 {
		return 0, false
	}
	var i uintptr
	fs, addr32 := false, false
	for ; i < 14; i++ {
		switch codeAt(p, i) {
		case 0x66, 0xf2, 0xf3, 0xf0, 0x2e, 0x36, 0x3e, 0x26:
			continue
		case 0x64:
			fs = true
			continue
		case 0x65:
			return 0, false // GS: the kernel's per-CPU base, not the program's
		case 0x67:
			addr32 = true
			continue
		}
		break
	}
	var rexB, rexX byte
	b := codeAt(p, i)
	if b&0xf0 == 0x40 {
		rexB, rexX = b&1, b>>1&1
		i++
		b = codeAt(p, i)
	}
	switch {
	case b == 0xc5: // two-byte VEX: map 0F, no X or B
		if codeAt(p, i+2) == 0x77 { // VZEROUPPER/VZEROALL
			return 0, false
		}
		rexB, rexX = 0, 0
		i += 3
	case b == 0xc4: // three-byte VEX
		v := codeAt(p, i+1)
		rexX, rexB = ^v>>6&1, ^v>>5&1
		m := v & 0x1f
		if m < 1 || m > 3 || (m == 1 && codeAt(p, i+3) == 0x77) {
			return 0, false
		}
		if m == 2 && codeAt(p, i+3)&0xf0 == 0x90 { // VGATHER*, VPGATHER*: VSIB
			return 0, false
		}
		i += 4
	case b == 0x0f:
		op := codeAt(p, i+1)
		switch {
		case op == 0x38 || op == 0x3a:
			i += 3
		case hasOp(&modrm2, op):
			i += 2
		default:
			return 0, false
		}
	case b == 0xa4 || b == 0xa5 || b == 0xaa || b == 0xab || b == 0xac || b == 0xad:
		// MOVS, STOS, LODS: stores go to RDI, loads come from RSI (MOVS
		// reads RSI too, but only its store is a write).
		if write {
			if b == 0xac || b == 0xad {
				return 0, false
			}
			return uintptr(tf.rdi), !addr32 && !fs
		}
		if b == 0xaa || b == 0xab {
			return 0, false
		}
		return uintptr(tf.rsi), !addr32 && !fs
	case write && (b&0xf8 == 0x50 || b == 0xe8 || b == 0x68 || b == 0x6a || b == 0x9c):
		// PUSH r, CALL rel32, PUSH imm, PUSHF: the store goes below RSP.
		return uintptr(tf.rsp - 8), !addr32 && !fs
	case hasOp(&modrm1, b):
		i++
	default:
		return 0, false
	}
	modrm := codeAt(p, i)
	i++
	if b == 0xff && write && (modrm>>3&7 == 2 || modrm>>3&7 == 6) {
		// CALL r/m, PUSH r/m: a write fault is the push (the operand is
		// only read).
		return uintptr(tf.rsp - 8), true
	}
	mod, rm := modrm>>6, modrm&7
	if mod == 3 {
		return 0, false // a register operand: not what faulted
	}
	var a uint64
	switch {
	case rm == 4: // SIB
		sib := codeAt(p, i)
		i++
		idx := sib>>3&7 | rexX<<3
		if idx != 4 {
			a = regOf(tf, idx) << (sib >> 6)
		}
		if base := sib&7 | rexB<<3; sib&7 == 5 && mod == 0 {
			a += disp32(p, i)
			i += 4
		} else {
			a += regOf(tf, base)
		}
	case rm == 5 && mod == 0:
		return 0, false // RIP-relative: needs the instruction's length
	default:
		a = regOf(tf, rm|rexB<<3)
	}
	switch mod {
	case 1:
		a += uint64(int64(int8(codeAt(p, i))))
	case 2:
		a += disp32(p, i)
	}
	if addr32 {
		a &= 0xffffffff
	}
	if fs {
		a += tf.fsbase
	}
	return uintptr(a), true
}
