package kvm

import (
	"os"
	"testing"
	"unsafe"
)

// The ioctl numbers encode the structure sizes; these must match them.
func TestABISizes(t *testing.T) {
	if s := unsafe.Sizeof(Regs{}); s != 0x90 {
		t.Errorf("kvm_regs %d bytes", s)
	}
	if s := unsafe.Sizeof(Sregs{}); s != 0x138 {
		t.Errorf("kvm_sregs %d bytes", s)
	}
	if s := unsafe.Sizeof(xcrs{}); s != 0x188 {
		t.Errorf("kvm_xcrs %d bytes", s)
	}
	if s := unsafe.Sizeof(userMemoryRegion{}); s != 0x20 {
		t.Errorf("kvm_userspace_memory_region %d bytes", s)
	}
	if s := unsafe.Sizeof(Events{}); s != 0x40 || unsafe.Offsetof(Events{}.InterruptInjected) != 8 || unsafe.Offsetof(Events{}.Flags) != 20 ||
		unsafe.Offsetof(Events{}.TripleFaultPending) != 28 || unsafe.Offsetof(Events{}.ExceptionHasPayload) != 55 {
		t.Errorf("kvm_vcpu_events %d bytes or misaligned fields", s)
	}
	if s := unsafe.Sizeof(CPUIDEntry{}); s != 40 {
		t.Errorf("kvm_cpuid_entry2 %d bytes", s)
	}
}

func TestOpen(t *testing.T) {
	s, err := Open()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but KVM is unavailable: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	defer s.Close()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if khz, err := c.TSCKHz(); err != nil || khz == 0 {
		t.Errorf("tsc khz %d, %v", khz, err)
	}
	ids, err := s.SupportedCPUID()
	if err != nil || len(ids) == 0 {
		t.Errorf("cpuid: %d entries, %v", len(ids), err)
	}
}
