#include "textflag.h"

// func copyNT(dst, src unsafe.Pointer, n uintptr)
//
// Copies n bytes (a multiple of 256; dst 32-byte aligned) with AVX2 loads
// and non-temporal stores. Runs in trap context: no stack frame, no
// calls; the caller's vector state is saved by the entry (XSAVE).
TEXT ·copyNT(SB),NOSPLIT,$0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $8, CX
	JZ   done
loop:
	PREFETCHNTA 1024(SI)
	PREFETCHNTA 1088(SI)
	PREFETCHNTA 1152(SI)
	PREFETCHNTA 1216(SI)
	VMOVDQU 0(SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3
	VMOVDQU 128(SI), Y4
	VMOVDQU 160(SI), Y5
	VMOVDQU 192(SI), Y6
	VMOVDQU 224(SI), Y7
	VMOVNTDQ Y0, 0(DI)
	VMOVNTDQ Y1, 32(DI)
	VMOVNTDQ Y2, 64(DI)
	VMOVNTDQ Y3, 96(DI)
	VMOVNTDQ Y4, 128(DI)
	VMOVNTDQ Y5, 160(DI)
	VMOVNTDQ Y6, 192(DI)
	VMOVNTDQ Y7, 224(DI)
	ADDQ $256, SI
	ADDQ $256, DI
	DECQ CX
	JNZ  loop
	SFENCE
	VZEROUPPER
done:
	RET

// func cpuAVX2() bool
//
// AVX2 present (CPUID.7.0:EBX[5]) and its state enabled by the OS
// (CPUID.1:ECX OSXSAVE and AVX, XCR0 bits 1 and 2).
TEXT ·cpuAVX2(SB),NOSPLIT,$0-1
	MOVB $0, ret+0(FP)
	MOVL $1, AX
	XORL CX, CX
	CPUID
	MOVL CX, R8
	ANDL $0x18000000, R8
	CMPL R8, $0x18000000
	JNE  no
	XORL CX, CX
	XGETBV
	ANDL $6, AX
	CMPL AX, $6
	JNE  no
	MOVL $7, AX
	XORL CX, CX
	CPUID
	BTL  $5, BX
	JCC  no
	MOVB $1, ret+0(FP)
no:
	RET
