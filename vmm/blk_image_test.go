package vmm_test

import (
	"bytes"
	"github.com/cumulusdb/cumulus/vmm/internal/diskpattern"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm"
)

// The virtio-blk disk end to end: the guest driver (kernel/dev/virtio/blk
// through kapi/unikernel) against the monitor's device model on a host
// file. testdata/blkguest writes patterns with many requests in flight,
// the image is booted again on the same file and reads them back, and the
// host checks the file itself.

func blkGuestImage(t *testing.T) *vmm.Image {
	return testdataImage(t, "blkguest")
}

func bootBlk(t *testing.T, disks []vmm.Disk, args ...string) run {
	t.Helper()
	img := blkGuestImage(t)
	var out, errb bytes.Buffer
	res, err := vmm.Run(img, vmm.Config{
		CPUs: 2, MemBytes: 512 << 20, Timeout: 3 * time.Minute,
		Args:   append([]string{"blkguest"}, args...),
		Stdout: &out, Stderr: &errb, Disks: disks,
	})
	return run{res, err, out.String(), errb.String()}
}

func TestBlkImageReboot(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	disks := []vmm.Disk{{Path: disk, Size: 64 << 20}}
	r := bootBlk(t, disks, "write=11", "sync=11")
	expectOK(t, r, "write", "sync")
	t.Logf("first boot: %d MMIO exits, %d device interrupts", r.res.Stats.MMIOExits, r.res.Stats.DeviceIRQs)

	// The host file holds what the guest wrote, where it wrote it.
	f, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != 64<<20 {
		t.Fatalf("disk file is %d bytes", len(f))
	}
	single, runs := diskpattern.Blocks(11, len(f)/4096)
	want := make([]byte, 4096)
	for _, b := range append(single[:200], runs...) {
		diskpattern.Pattern(want, 11, b)
		if !bytes.Equal(f[b*4096:(b+1)*4096], want) {
			t.Fatalf("host file: block %d differs from what the guest wrote", b)
		}
	}

	// Reboot: the data is still there.
	r = bootBlk(t, disks, "verify=11", "syncverify=11")
	expectOK(t, r, "verify", "syncverify")

	// And the check can fail: another seed's patterns are not there.
	r = bootBlk(t, disks, "verify=12")
	if r.err != nil || r.res.ExitCode == 0 {
		t.Fatalf("verify with the wrong seed: exit %d, %v\n%s", r.res.ExitCode, r.err, r.stderr)
	}
}

func TestBlkImageReadOnly(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r := bootBlk(t, []vmm.Disk{{Path: disk, ReadOnly: true}}, "readonly")
	expectOK(t, r, "readonly")
}
