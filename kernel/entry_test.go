package kernel

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestEntryCodeGlobal: the monitor defers the preemption tick while RIP is
// inside the kernel's entry code, which it finds as the range of
// kernel.*.abi0 symbols (vmm/vmm.go). A file-local assembly function
// (name<>) is not such a symbol, and the linker may place it outside the
// range: a tick delivered there, before the entry sets PC_INKERNEL, wrote
// the kernel's registers over the program's in the thread's frame (issue
// 8). So every function in entry_amd64.s is global.
func TestEntryCodeGlobal(t *testing.T) {
	src, err := os.ReadFile("entry_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^TEXT\s+(\S+)\(SB\)`)
	n := 0
	for _, m := range re.FindAllSubmatch(src, -1) {
		n++
		if name := string(m[1]); !strings.HasPrefix(name, "·") || strings.Contains(name, "<>") {
			t.Errorf("TEXT %s: entry code must be a package-global (·name) symbol", name)
		}
	}
	if n < 40 {
		t.Fatalf("found %d TEXT lines in entry_amd64.s", n)
	}
}
