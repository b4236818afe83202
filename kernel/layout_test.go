package kernel

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// TestLayout checks that the Go mirrors of the per-CPU block, the trap
// frame and the thread slot agree with kernel/boot, which the assembly
// (entry_amd64.s) and the monitor both use.
func TestLayout(t *testing.T) {
	var pc perCPU
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"self", unsafe.Offsetof(pc.self), boot.PCSelf},
		{"scratch", unsafe.Offsetof(pc.scratch), boot.PCScratch},
		{"curFrame", unsafe.Offsetof(pc.curFrame), boot.PCCurFrame},
		{"kstack", unsafe.Offsetof(pc.kstack), boot.PCKStack},
		{"kfs", unsafe.Offsetof(pc.kfs), boot.PCKFS},
		{"inKernel", unsafe.Offsetof(pc.inKernel), boot.PCInKernel},
		{"tickPend", unsafe.Offsetof(pc.tickPend), boot.PCTickPend},
		{"halted", unsafe.Offsetof(pc.halted), boot.PCHalted},
		{"hcArgs", unsafe.Offsetof(pc.hcArgs), boot.PCHCArgs},
		{"bootInfo", unsafe.Offsetof(pc.bootInfo), boot.PCBootInfo},
		{"istTop", unsafe.Offsetof(pc.istTop), boot.PCISTTop},
		{"ticks", unsafe.Offsetof(pc.ticks), boot.PCTicks},
	} {
		if c.got != c.want {
			t.Errorf("perCPU.%s at %#x, boot says %#x", c.name, c.got, c.want)
		}
	}
	if unsafe.Sizeof(pc) > boot.PCFaultFrame {
		t.Errorf("perCPU (%d bytes) overlaps the fault frame", unsafe.Sizeof(pc))
	}
	var tf trapFrame
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"rax", unsafe.Offsetof(tf.rax), boot.TFRAX}, {"rdi", unsafe.Offsetof(tf.rdi), boot.TFRDI},
		{"r15", unsafe.Offsetof(tf.r15), boot.TFR15}, {"rip", unsafe.Offsetof(tf.rip), boot.TFRIP},
		{"rsp", unsafe.Offsetof(tf.rsp), boot.TFRSP}, {"rflags", unsafe.Offsetof(tf.rflags), boot.TFRFLAGS},
		{"fsbase", unsafe.Offsetof(tf.fsbase), boot.TFFSBase}, {"kind", unsafe.Offsetof(tf.kind), boot.TFKind},
		{"vector", unsafe.Offsetof(tf.vector), boot.TFVector}, {"errcode", unsafe.Offsetof(tf.errcode), boot.TFError},
	} {
		if c.got != c.want {
			t.Errorf("trapFrame.%s at %#x, boot says %#x", c.name, c.got, c.want)
		}
	}
	var th thread
	if unsafe.Sizeof(th) != boot.ThreadSize || unsafe.Offsetof(th.xsave) != boot.TFXSave {
		t.Errorf("thread: %d bytes, xsave at %#x", unsafe.Sizeof(th), unsafe.Offsetof(th.xsave))
	}
	if boot.TFXSave%64 != 0 || boot.ThreadSize%64 != 0 {
		t.Error("XSAVE area must be 64-byte aligned")
	}
	if unsafe.Sizeof(boot.BootInfo{}) > boot.PageSize {
		t.Error("BootInfo exceeds a page")
	}
	var bi boot.BootInfo
	if unsafe.Offsetof(bi.BootTSC) != boot.BIOffBootTSC || unsafe.Offsetof(bi.BootUnixNano) != boot.BIOffBootUnix || unsafe.Offsetof(bi.TSCMult) != boot.BIOffTSCMult {
		t.Error("BootInfo offsets used by the vDSO moved")
	}
}

// TestAsmDefines checks the constants entry_amd64.s spells out by hand
// (the assembler cannot read kernel/boot) against kernel/boot.
func TestAsmDefines(t *testing.T) {
	src, err := os.ReadFile("entry_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint64{
		"PC_SCRATCH": boot.PCScratch, "PC_CURFRAME": boot.PCCurFrame, "PC_KSTACK": boot.PCKStack,
		"PC_KFS": boot.PCKFS, "PC_INKERNEL": boot.PCInKernel, "PC_FAULTFRAME": boot.PCFaultFrame,
		"PRIVOP_ADDR": boot.PrivopAddr, "PRIVOP_END": boot.PrivopEnd, "HC_PRIVOPFAULT": boot.HCPrivopFault,
	} {
		line := fmt.Sprintf("#define %s %#x\n", name, want)
		if !strings.Contains(strings.Join(strings.Fields(string(src)), " "), strings.TrimSpace(line)) {
			t.Errorf("entry_amd64.s: want %q", strings.TrimSpace(line))
		}
	}
}

// TestRunQueue exercises the FIFO ring without a machine.
func TestRunQueue(t *testing.T) {
	for i := int32(0); i < boot.MaxThreads; i++ {
		runq[(runqHead+runqN)%boot.MaxThreads] = i
		runqN++
	}
	for i := int32(0); i < boot.MaxThreads; i++ {
		if got := dequeue(); got != i {
			t.Fatalf("dequeue %d, want %d", got, i)
		}
	}
	if dequeue() != -1 {
		t.Fatal("empty queue returned a thread")
	}
}
