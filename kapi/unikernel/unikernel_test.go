package unikernel

import (
	"testing"

	"github.com/cumulusdb/cumulus/kapi"
)

// On Linux the probe fails and Default stays Linux; the image side is
// tested by booting a program that uses this package (vmm tests, "kapi").
func TestProbeOnLinux(t *testing.T) {
	if Probe() {
		t.Skip("running inside a CumulusDB image")
	}
	k, err := kapi.Default()
	if err != nil || k.Name() != "linux" {
		t.Fatalf("Default on Linux: %v %v", k, err)
	}
}
