package kernel

import (
	"testing"
	"unsafe"
)

// TestFaultAddr decodes hand-assembled instructions (the encodings the Go
// toolchain emits for stores, loads, AVX moves and string stores) against
// a register file, and checks the forms it must refuse.
func TestFaultAddr(t *testing.T) {
	tf := trapFrame{rax: 0x1000_0000, rcx: 3, rdx: 0x2000_0000, rbx: 0x3000_0000, rsp: 0x7000_0000,
		rbp: 0x7100_0000, rsi: 0x4000_0000, rdi: 0x5000_0000, r12: 0x6000_0000, r15: 0x6100_0000, fsbase: 0x8000_0000}
	cases := []struct {
		name  string
		code  []byte
		write bool
		want  uint64
		ok    bool
	}{
		{"MOVQ AX, (AX)(CX*8)", []byte{0x48, 0x89, 0x04, 0xc8}, true, 0x1000_0000 + 24, true},
		{"INCQ (DX)(CX*8)", []byte{0x48, 0xff, 0x04, 0xca}, true, 0x2000_0000 + 24, true},
		{"VMOVDQU Y0, (DI)", []byte{0xc5, 0xfe, 0x7f, 0x07}, true, 0x5000_0000, true},
		{"VMOVNTDQ Y0, 0x20(DI)", []byte{0xc5, 0xfd, 0xe7, 0x47, 0x20}, true, 0x5000_0020, true},
		{"VMOVDQU Y0, (R12) (three-byte VEX)", []byte{0xc4, 0xc1, 0x7e, 0x7f, 0x04, 0x24}, true, 0x6000_0000, true},
		{"REP STOSQ", []byte{0xf3, 0x48, 0xab}, true, 0x5000_0000, true},
		{"REP MOVSB (write)", []byte{0xf3, 0xa4}, true, 0x5000_0000, true},
		{"REP MOVSB (read)", []byte{0xf3, 0xa4}, false, 0x4000_0000, true},
		{"MOVQ FS:-8, CX", []byte{0x64, 0x48, 0x8b, 0x0c, 0x25, 0xf8, 0xff, 0xff, 0xff}, false, 0x8000_0000 - 8, true},
		{"MOVB $1, 0x10(R12)", []byte{0x41, 0xc6, 0x44, 0x24, 0x10, 0x01}, true, 0x6000_0010, true},
		{"MOVL -8(BP), AX", []byte{0x8b, 0x45, 0xf8}, false, 0x7100_0000 - 8, true},
		{"MOVQ AX, 0x100(SP)", []byte{0x48, 0x89, 0x84, 0x24, 0x00, 0x01, 0x00, 0x00}, true, 0x7000_0100, true},
		{"MOVQ AX, -0x40(R15)(CX*2)", []byte{0x49, 0x89, 0x44, 0x4f, 0xc0}, true, 0x6100_0000 + 6 - 0x40, true},
		{"MOVUPS X0, (SI)", []byte{0x0f, 0x11, 0x06}, true, 0x4000_0000, true},
		{"CMPXCHGQ CX, (BX)", []byte{0xf0, 0x48, 0x0f, 0xb1, 0x0b}, true, 0x3000_0000, true},
		{"MOVL CX, (CX) addr32", []byte{0x67, 0x89, 0x09}, true, 3, true},
		{"CALL rel32", []byte{0xe8, 0x10, 0x00, 0x00, 0x00}, true, 0x7000_0000 - 8, true},
		{"PUSHQ BP", []byte{0x55}, true, 0x7000_0000 - 8, true},
		{"PUSHQ R12", []byte{0x41, 0x54}, true, 0x7000_0000 - 8, true},
		{"CALL *(AX) (the push)", []byte{0xff, 0x10}, true, 0x7000_0000 - 8, true},
		{"CALL *(AX) (the read)", []byte{0xff, 0x10}, false, 0x1000_0000, true},
		{"RIP-relative store", []byte{0x48, 0x89, 0x05, 0x10, 0x00, 0x00, 0x00}, true, 0, false},
		{"register operand", []byte{0x48, 0x89, 0xc8}, true, 0, false},
		{"GS override", []byte{0x65, 0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00}, true, 0, false},
		{"VZEROUPPER", []byte{0xc5, 0xf8, 0x77}, true, 0, false},
		{"PUSHQ on a read fault", []byte{0x50}, false, 0, false},
		{"STOSB on a read fault", []byte{0xaa}, false, 0, false},
	}
	for _, c := range cases {
		code := append(append([]byte{}, c.code...), make([]byte, 16)...)
		f := tf
		f.rip = uint64(uintptr(unsafe.Pointer(&code[0])))
		got, ok := faultAddr(&f, c.write)
		if ok != c.ok || (ok && uint64(got) != c.want) {
			t.Errorf("%s: got %#x, %v; want %#x, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}
