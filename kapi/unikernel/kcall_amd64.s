// kcall enters the kernel directly (DESIGN §1.4): no trap. It runs in the
// program, so it keeps the kernel's entry rules by hand: PC_INKERNEL is set
// first (the monitor then defers the tick, so the thread can neither be
// preempted nor migrate, and GS keeps naming this CPU), FS and the stack
// are switched to this CPU's kernel ones, and they are restored before
// PC_INKERNEL is cleared. Offsets mirror kernel/boot.

#include "textflag.h"

#define PC_KSTACK   0x20
#define PC_KFS      0x28
#define PC_INKERNEL 0x30
#define PC_KCALLSP  0xb0
#define PC_KCALLFS  0xb8
#define BI_KCALL    0x280070

// func kcall(op, a0, a1, a2 uint64) (r0, r1 uint64)
TEXT ·kcall(SB),NOSPLIT,$0-48
	MOVQ op+0(FP), AX
	MOVQ a0+8(FP), DI
	MOVQ a1+16(FP), SI
	MOVQ a2+24(FP), DX
	MOVQ $BI_KCALL, R8
	MOVQ (R8), R8
	MOVQ $1, PC_INKERNEL(GS)
	RDFSBASEQ R9
	MOVQ R9, PC_KCALLFS(GS)
	MOVQ SP, PC_KCALLSP(GS)
	MOVQ PC_KFS(GS), R9
	WRFSBASEQ R9
	MOVQ PC_KSTACK(GS), SP
	CALL R8
	MOVQ PC_KCALLFS(GS), R9
	WRFSBASEQ R9
	MOVQ PC_KCALLSP(GS), SP
	MOVQ $0, PC_INKERNEL(GS)
	MOVQ AX, r0+32(FP)
	MOVQ BX, r1+40(FP)
	RET
