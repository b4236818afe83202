package vmm

import (
	"encoding/binary"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// buildVDSO writes a minimal vDSO at boot.VDSOAddr (AT_SYSINFO_EHDR): an
// ELF header, PT_LOAD and PT_DYNAMIC, a dynamic table with STRTAB, SYMTAB,
// HASH and VERDEF (the Go runtime's parser needs all four), and two
// symbols, __vdso_clock_gettime and __vdso_gettimeofday, whose values
// point into the kernel image at its TSC-based clock routines. With it,
// time.Now and the runtime's nanotime never enter the kernel.
func (m *machine) buildVDSO() {
	const base = boot.VDSOAddr
	b := m.mem[base : base+boot.PageSize]
	clear(b)
	le := binary.LittleEndian
	const (
		phOff   = 64
		dynOff  = 0x100
		strOff  = 0x200
		symOff  = 0x300
		hashOff = 0x400
		verOff  = 0x480
	)
	// ELF header.
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 3)  // ET_DYN
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], phOff)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], 2)
	// PT_LOAD covering the page, PT_DYNAMIC.
	ph := b[phOff:]
	le.PutUint32(ph[0:], 1)
	le.PutUint32(ph[4:], 5)
	le.PutUint64(ph[32:], boot.PageSize)
	le.PutUint64(ph[40:], boot.PageSize)
	ph = b[phOff+56:]
	le.PutUint32(ph[0:], 2)
	le.PutUint64(ph[8:], dynOff)
	le.PutUint64(ph[16:], dynOff)
	le.PutUint64(ph[32:], 5*16)
	// Dynamic table.
	dyn := [][2]uint64{{5, strOff}, {6, symOff}, {4, hashOff}, {0x6ffffffc, verOff}, {0, 0}}
	for i, d := range dyn {
		le.PutUint64(b[dynOff+16*i:], d[0])
		le.PutUint64(b[dynOff+16*i+8:], d[1])
	}
	// Strings.
	strs := "\x00__vdso_clock_gettime\x00__vdso_gettimeofday\x00LINUX_2.6\x00"
	copy(b[strOff:], strs)
	nameCG, nameTOD, nameVer := uint32(1), uint32(22), uint32(42)
	// Symbols: 0 is null.
	sym := func(i int, name uint32, addr uint64) {
		s := b[symOff+24*i:]
		le.PutUint32(s[0:], name)
		s[4] = 0x12 // STB_GLOBAL, STT_FUNC
		le.PutUint16(s[6:], 1)
		le.PutUint64(s[8:], addr-base)
		le.PutUint64(s[16:], 64)
	}
	sym(1, nameCG, m.kern.byName[boot.SymVDSOClock].Value)
	sym(2, nameTOD, m.kern.byName[boot.SymVDSOTOD].Value)
	// SysV hash: one bucket chaining symbols 1 → 2.
	for i, v := range []uint32{1, 3, 1, 0, 2, 0} {
		le.PutUint32(b[hashOff+4*i:], v)
	}
	// One version definition, LINUX_2.6.
	v := b[verOff:]
	le.PutUint16(v[0:], 1)         // vd_version
	le.PutUint16(v[4:], 2)         // vd_ndx
	le.PutUint16(v[6:], 1)         // vd_cnt
	le.PutUint32(v[8:], 0x3ae75f6) // vd_hash
	le.PutUint32(v[12:], 20)       // vd_aux
	le.PutUint32(v[20:], nameVer)  // vda_name
}
