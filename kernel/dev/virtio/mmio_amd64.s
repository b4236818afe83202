// Register accesses of virtio-mmio: one MOV each, of the register's width,
// so the monitor sees exactly one access per call (see MMIO in mmio.go).

#include "textflag.h"

// func mmioRead32(addr uintptr) uint32
TEXT ·mmioRead32(SB),NOSPLIT,$0-12
	MOVQ addr+0(FP), AX
	MOVL (AX), BX
	MOVL BX, ret+8(FP)
	RET

// func mmioWrite32(addr uintptr, v uint32)
TEXT ·mmioWrite32(SB),NOSPLIT,$0-12
	MOVQ addr+0(FP), AX
	MOVL v+8(FP), BX
	MOVL BX, (AX)
	RET

// func mmioRead16(addr uintptr) uint16
TEXT ·mmioRead16(SB),NOSPLIT,$0-10
	MOVQ addr+0(FP), AX
	MOVW (AX), BX
	MOVW BX, ret+8(FP)
	RET

// func mmioRead8(addr uintptr) uint8
TEXT ·mmioRead8(SB),NOSPLIT,$0-9
	MOVQ addr+0(FP), AX
	MOVB (AX), BX
	MOVB BX, ret+8(FP)
	RET

// func hypercall(port uint16, arg uint32): OUT to a hypercall port (the
// TSS I/O bitmap lets CPL 3 code reach the monitor's ports).
TEXT ·hypercall(SB),NOSPLIT,$0-8
	MOVW port+0(FP), DX
	MOVL arg+4(FP), AX
	OUTL
	RET
