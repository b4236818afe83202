package build

import (
	"bytes"
	"debug/elf"
	"testing"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm"
)

// TestKernel builds the kernel ELF and checks what the monitor relies on:
// linked at vmm.KernelBase, with every entry point present.
func TestKernel(t *testing.T) {
	k, err := Kernel()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(k))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && (p.Vaddr < vmm.KernelBase || p.Vaddr+p.Memsz > vmm.KernelBase+1<<30) {
			t.Errorf("segment %#x+%#x outside the kernel window", p.Vaddr, p.Memsz)
		}
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range syms {
		have[s.Name] = true
	}
	for _, name := range []string{boot.SymSyscallEntry, boot.SymTickEntry, boot.SymAPEntry, boot.SymResume, boot.SymVDSOClock, boot.SymVDSOTOD, boot.SymFaultPrefix + "14.abi0", boot.SymPrefix + "stats"} {
		if !have[name] {
			t.Errorf("kernel lacks %s", name)
		}
	}
}

func TestProgramRefusesNonGo(t *testing.T) {
	if _, err := Program("/bin/true"); err == nil {
		t.Error("a dynamically linked C program was accepted")
	}
}
