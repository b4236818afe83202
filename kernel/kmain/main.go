// Command kmain links CumulusDB's guest kernel into its own ELF. The
// monitor loads that ELF at 0x4000000000 beside the program it boots and
// enters the kernel only through the entry points kernel.Entries keeps
// alive; this main function is never run (the kernel's Go runtime is never
// started, see package kernel).
//
// Build: go build -ldflags=-T=0x4000001000 -o kernel.elf ./kernel/kmain
// (cumulus image does this).
package main

import (
	"os"

	"github.com/cumulusdb/cumulus/kernel"
)

func main() {
	if kernel.Keep() == 0 {
		os.Exit(1)
	}
	os.Stderr.WriteString("kmain: this is the CumulusDB guest kernel; boot a program with `cumulus run`\n")
	os.Exit(2)
}
