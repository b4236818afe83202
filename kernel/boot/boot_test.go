package boot

import "testing"

// The fixed guest-physical areas must not overlap one another or the image.
func TestLayoutDisjoint(t *testing.T) {
	areas := []struct {
		name       string
		start, end uint64
	}{
		{"pml4", PML4Addr, PML4Addr + PageSize},
		{"pdpt", PDPTAddr, PDPTAddr + PageSize},
		{"pd", PDAddr, PDAddr + (MaxRAMGiB+1)*PageSize},
		{"bootinfo", BootInfoAddr, BootInfoAddr + PageSize},
		{"vdso", VDSOAddr, VDSOAddr + PageSize},
		{"idt", IDTAddr, IDTAddr + PageSize},
		{"cpu tables", CPUTablesAddr, CPUTablesAddr + MaxCPUs*CPUTablesSize},
	}
	for i, a := range areas {
		if a.start < NullGuardEnd || a.end > ImageMin {
			t.Errorf("%s [%#x,%#x) outside [null guard, image)", a.name, a.start, a.end)
		}
		for _, b := range areas[i+1:] {
			if a.start < b.end && b.start < a.end {
				t.Errorf("%s overlaps %s", a.name, b.name)
			}
		}
	}
	if TSSOffset+TSSLimit+1 > CPUTablesSize || GDTSize > TSSOffset {
		t.Error("GDT/TSS/I-O bitmap do not fit the per-CPU tables")
	}
}
