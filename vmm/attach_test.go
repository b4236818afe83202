package vmm

import (
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/blk"
	"github.com/cumulusdb/cumulus/vmm/virtio/virtiotest"
)

func TestParsePortForward(t *testing.T) {
	for in, want := range map[string]PortForward{
		"8080:80":             {"", 8080, 80},
		"127.0.0.1:5432:5432": {"127.0.0.1", 5432, 5432},
		"[::1]:0:7":           {"::1", 0, 7},
		"localhost:8443:443":  {"localhost", 8443, 443},
		"0.0.0.0:65535:65535": {"0.0.0.0", 65535, 65535},
	} {
		got, err := ParsePortForward(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v, %v", in, got, err)
		}
	}
	for _, in := range []string{"80", "a:80", "80:0", "80:65536", "1.2.3.4:x:80", "::1:80:80", ":80", "-1:80"} {
		if _, err := ParsePortForward(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestParseDisk(t *testing.T) {
	d, err := ParseDisk("a/b.img", 1<<30)
	if err != nil || d != (Disk{Path: "a/b.img", Size: 1 << 30}) {
		t.Fatal(d, err)
	}
	d, err = ParseDisk("b.img:ro", 1<<30)
	if err != nil || d != (Disk{Path: "b.img", ReadOnly: true}) {
		t.Fatal(d, err)
	}
	if _, err := ParseDisk(":ro", 0); err == nil {
		t.Fatal("empty path accepted")
	}
}

// The devices Config asks for are attached in order (vda, vdb, eth0),
// described in the boot information, reachable through the MMIO
// dispatch, and raise the guest's interrupt words. No KVM needed: the
// machine is only its memory here.
func TestAttachDevices(t *testing.T) {
	dir := t.TempDir()
	m := &machine{cfg: Config{
		MemBytes: 64 << 20, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Disks: []Disk{{Path: filepath.Join(dir, "a"), Size: 1 << 20}, {Path: filepath.Join(dir, "b"), Size: 2 << 20}},
		Ports: []PortForward{{HostAddr: "127.0.0.1", GuestPort: 80}},
	}}
	m.mem = make([]byte, m.cfg.MemBytes)
	if err := m.attachDevices(); err != nil {
		t.Fatal(err)
	}
	defer m.closeDevices()
	var bi boot.BootInfo
	m.describeDevices(&bi)
	if bi.NumDevices != 3 {
		t.Fatalf("%d devices", bi.NumDevices)
	}
	for i, want := range []struct {
		name string
		id   uint32
	}{{"vda", boot.VirtioBlock}, {"vdb", boot.VirtioBlock}, {"eth0", boot.VirtioNet}} {
		d := bi.Devices[i]
		if name := string(d.Name[:len(want.name)]); name != want.name || d.Name[len(want.name)] != 0 || d.ID != want.id || d.IRQ != uint32(i) {
			t.Fatalf("device %d: %+v", i, d)
		}
	}
	for _, p := range m.cfg.Disks {
		if st, err := os.Stat(p.Path); err != nil || st.Size() != p.Size {
			t.Fatalf("disk %s not created with its size", p.Path)
		}
	}
	// Drive vdb through the vCPU's MMIO dispatch: a write, a flush.
	mem := virtio.NewMemory(m.mem)
	drv := virtiotest.New(&mmioWindow{v: &vcpu{m: m}, base: boot.MMIOBase + boot.MMIOStride}, mem, 16<<20)
	if err := drv.Init(virtio.FVersion1|blk.FFlush, 0); err != nil {
		t.Fatal(err)
	}
	if c := drv.Read(virtio.RegConfig); c != 4096 {
		t.Fatalf("vdb capacity %d sectors", c)
	}
	q := drv.Q[0]
	hdr := drv.Alloc(16, 16)
	data := drv.Alloc(4096, 4096)
	status := drv.Alloc(1, 1)
	binary.LittleEndian.PutUint32(m.mem[hdr:], blk.TOut)
	binary.LittleEndian.PutUint64(m.mem[hdr+8:], 3)
	copy(m.mem[data:], "written through the machine")
	if _, err := q.Submit(5*time.Second, virtiotest.Buf{Addr: hdr, Len: 16}, virtiotest.Buf{Addr: data, Len: 4096},
		virtiotest.Buf{Addr: status, Len: 1, Write: true}); err != nil || m.mem[status] != blk.SOK {
		t.Fatal("write", err, m.mem[status])
	}
	// Interrupt words in the boot information page.
	bip := (*boot.BootInfo)(unsafe.Pointer(&m.mem[boot.BootInfoAddr]))
	if atomic.LoadUint32(&bip.IRQCount[1]) == 0 || atomic.LoadUint64(&bip.IRQPending)&2 == 0 {
		t.Fatal("no interrupt raised for vdb")
	}
	if m.mmioExits.Load() == 0 {
		t.Fatal("MMIO exits not counted")
	}
	st := m.deviceStats()
	if len(st) != 3 || st[1].Name != "vdb" || st[1].WriteBytes != 4096 || st[1].Notifies == 0 || st[2].Net == nil {
		t.Fatalf("device stats %+v", st)
	}
	if err := m.closeDevices(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.ReadFile(m.cfg.Disks[1].Path)
	if string(f[3*512:3*512+27]) != "written through the machine" {
		t.Fatal("vdb's file")
	}
}

// mmioWindow routes a test driver's register accesses through the
// vCPU's MMIO exit handler, as a guest's would be.
type mmioWindow struct {
	v    *vcpu
	base uint64
}

func (w *mmioWindow) MMIORead(off uint64, data []byte) {
	if !w.v.mmioExit(w.base+off, data, false) {
		panic("MMIO read outside every window")
	}
}

func (w *mmioWindow) MMIOWrite(off uint64, data []byte) {
	if !w.v.mmioExit(w.base+off, data, true) {
		panic("MMIO write outside every window")
	}
}

// doorbellWindow is mmioWindow whose notifications are rung as doorbells
// in the boot page (kernel/boot) instead of QueueNotify writes; deliver
// plays the exit that carries them.
type doorbellWindow struct {
	mmioWindow
	dev     int
	deliver func()
}

func (w *doorbellWindow) MMIOWrite(off uint64, data []byte) {
	if off != virtio.RegQueueNotify {
		w.mmioWindow.MMIOWrite(off, data)
		return
	}
	bi := (*boot.BootInfo)(unsafe.Pointer(&w.v.m.mem[boot.BootInfoAddr]))
	atomic.OrUint32(&bi.DoorbellQueues[w.dev], 1<<binary.LittleEndian.Uint32(data))
	atomic.OrUint64(&bi.Doorbell, 1<<w.dev)
	w.deliver()
}

// Doorbells reach the device at the next exit (m.doorbells) and are
// cleared there; HCNotify's notify reaches it the same way.
func TestDoorbells(t *testing.T) {
	dir := t.TempDir()
	m := &machine{cfg: Config{
		MemBytes: 64 << 20, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Disks: []Disk{{Path: filepath.Join(dir, "a"), Size: 1 << 20}},
	}}
	m.mem = make([]byte, m.cfg.MemBytes)
	if err := m.attachDevices(); err != nil {
		t.Fatal(err)
	}
	defer m.closeDevices()
	mem := virtio.NewMemory(m.mem)
	bip := (*boot.BootInfo)(unsafe.Pointer(&m.mem[boot.BootInfoAddr]))
	exits := 0
	w := &doorbellWindow{mmioWindow: mmioWindow{v: &vcpu{m: m}, base: boot.MMIOBase}, dev: 0, deliver: func() {
		exits++
		m.doorbells()
	}}
	drv := virtiotest.New(w, mem, 16<<20)
	if err := drv.Init(virtio.FVersion1|blk.FFlush, 0); err != nil {
		t.Fatal(err)
	}
	q := drv.Q[0]
	hdr := drv.Alloc(16, 16)
	status := drv.Alloc(1, 1)
	binary.LittleEndian.PutUint32(m.mem[hdr:], blk.TFlush)
	for i := range 3 {
		m.mem[status] = 0xff
		if _, err := q.Submit(5*time.Second, virtiotest.Buf{Addr: hdr, Len: 16}, virtiotest.Buf{Addr: status, Len: 1, Write: true}); err != nil || m.mem[status] != blk.SOK {
			t.Fatalf("flush %d through a doorbell: %v, status %d", i, err, m.mem[status])
		}
	}
	if exits == 0 {
		t.Fatal("no doorbell rung: the device was polling the whole time")
	}
	if atomic.LoadUint64(&bip.Doorbell) != 0 || atomic.LoadUint32(&bip.DoorbellQueues[0]) != 0 {
		t.Fatal("doorbell words not cleared")
	}
	// HCNotify(device<<16 | queue): m.notify, then the doorbells.
	w.deliver = func() {
		atomic.AndUint64(&bip.Doorbell, 0)
		atomic.AndUint32(&bip.DoorbellQueues[0], 0)
		m.notify(0, 0)
	}
	m.mem[status] = 0xff
	if _, err := q.Submit(5*time.Second, virtiotest.Buf{Addr: hdr, Len: 16}, virtiotest.Buf{Addr: status, Len: 1, Write: true}); err != nil || m.mem[status] != blk.SOK {
		t.Fatalf("flush through HCNotify: %v, status %d", err, m.mem[status])
	}
	m.notify(7, 0) // no such device: ignored
	m.notify(-1, 0)
}
