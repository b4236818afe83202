package blk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/blk"
	"github.com/cumulusdb/cumulus/vmm/virtio/virtiotest"
)

const timeout = 5 * time.Second

type rig struct {
	t   *testing.T
	mem virtio.Memory
	dev *blk.Device
	tr  *virtio.Transport
	drv *virtiotest.Driver
	q   *virtiotest.DQueue
	// request scratch
	hdr, data, status uint64
}

func newRig(t *testing.T, cfg blk.Config) *rig {
	t.Helper()
	dev, err := blk.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, mem: virtio.NewMemory(make([]byte, 4<<20)), dev: dev}
	r.tr = virtio.NewTransport(dev, r.mem, nil, nil)
	t.Cleanup(func() { r.tr.Close() })
	r.drv = virtiotest.New(r.tr, r.mem, 0x1000)
	if err := r.drv.Init(virtio.FVersion1|virtio.FRingEventIdx|blk.FFlush|blk.FRO|blk.FSegMax|blk.FSizeMax, 0); err != nil {
		t.Fatal(err)
	}
	r.q = r.drv.Q[0]
	r.hdr = r.drv.Alloc(16*64, 16)
	r.status = r.drv.Alloc(64, 8)
	r.data = r.drv.Alloc(1<<20, 4096)
	return r
}

// req submits one request with a data area of n bytes at r.data (split
// in two segments) and returns the status byte and used length.
func (r *rig) req(typ uint32, sector uint64, n uint32) (byte, uint32) {
	r.t.Helper()
	binary.LittleEndian.PutUint32(r.slice(r.hdr, 16), typ)
	binary.LittleEndian.PutUint64(r.slice(r.hdr+8, 8), sector)
	r.slice(r.status, 1)[0] = 0xee
	write := typ != blk.TOut
	bufs := []virtiotest.Buf{{Addr: r.hdr, Len: 16}}
	if n > 0 {
		h := n / 2 &^ 511
		if h > 0 {
			bufs = append(bufs, virtiotest.Buf{Addr: r.data, Len: h, Write: write})
		}
		bufs = append(bufs, virtiotest.Buf{Addr: r.data + uint64(h), Len: n - h, Write: write})
	}
	bufs = append(bufs, virtiotest.Buf{Addr: r.status, Len: 1, Write: true})
	u, err := r.q.Submit(timeout, bufs...)
	if err != nil {
		r.t.Fatal(err)
	}
	return r.slice(r.status, 1)[0], u.Len
}

func (r *rig) slice(a, n uint64) []byte {
	b, _ := r.mem.Slice(a, n)
	return b
}

func TestReadWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	r := newRig(t, blk.Config{Path: path, Size: 1 << 20})
	if r.drv.Read(virtio.RegDeviceID) != 2 {
		t.Fatal("device ID")
	}
	if c := uint64(r.drv.Read(virtio.RegConfig)) | uint64(r.drv.Read(virtio.RegConfig+4))<<32; c != 2048 {
		t.Fatalf("capacity %d sectors, want 2048", c)
	}
	if r.drv.Features&blk.FRO != 0 || r.drv.Features&blk.FFlush == 0 {
		t.Fatalf("features %#x", r.drv.Features)
	}
	pattern := make([]byte, 64<<10)
	for i := range pattern {
		pattern[i] = byte(i*7 + i>>9)
	}
	copy(r.slice(r.data, uint64(len(pattern))), pattern)
	if s, n := r.req(blk.TOut, 100, uint32(len(pattern))); s != blk.SOK || n != 1 {
		t.Fatalf("write: status %d len %d", s, n)
	}
	clear(r.slice(r.data, uint64(len(pattern))))
	if s, n := r.req(blk.TIn, 100, uint32(len(pattern))); s != blk.SOK || n != uint32(len(pattern))+1 {
		t.Fatalf("read: status %d len %d", s, n)
	}
	if !bytes.Equal(r.slice(r.data, uint64(len(pattern))), pattern) {
		t.Fatal("read back different data")
	}
	if s, _ := r.req(blk.TFlush, 0, 0); s != blk.SOK {
		t.Fatalf("flush: status %d", s)
	}
	// On the host file.
	f, _ := os.ReadFile(path)
	if len(f) != 1<<20 || !bytes.Equal(f[100*512:100*512+len(pattern)], pattern) {
		t.Fatal("host file contents")
	}
	// The last sector is fine, one past it is not.
	if s, _ := r.req(blk.TIn, 2047, 512); s != blk.SOK {
		t.Fatalf("last sector: status %d", s)
	}
	for _, c := range []struct {
		typ    uint32
		sector uint64
		n      uint32
	}{{blk.TIn, 2047, 1024}, {blk.TOut, 2048, 512}, {blk.TIn, 1 << 62, 512}, {blk.TIn, ^uint64(0), 512}, {blk.TIn, 0, 100}} {
		if s, _ := r.req(c.typ, c.sector, c.n); s != blk.SIOErr {
			t.Fatalf("%+v: status %d, want IOERR", c, s)
		}
	}
	if s, _ := r.req(77, 0, 0); s != blk.SUnsupp {
		t.Fatalf("unknown type: status %d", s)
	}
	// GET_ID: 20 bytes, the file's base name.
	clear(r.slice(r.data, 20))
	if s, n := r.req(blk.TGetID, 0, 20); s != blk.SOK || n != 21 {
		t.Fatalf("get id: status %d len %d", s, n)
	}
	if got := string(bytes.TrimRight(r.slice(r.data, 20), "\x00")); got != "disk.img" {
		t.Fatalf("id %q", got)
	}
	st := r.tr.Stats()
	if st.Requests == 0 || st.WriteBytes != 64<<10 || st.Flushes != 1 || st.Errors != 6 {
		t.Fatalf("stats %+v", st)
	}
}

func TestInFlight(t *testing.T) {
	r := newRig(t, blk.Config{Path: filepath.Join(t.TempDir(), "d"), Size: 8 << 20, Workers: 8})
	const n = 64
	old := r.q.AvailIdx()
	for i := range n {
		hdr := r.hdr + 16*uint64(i)
		binary.LittleEndian.PutUint32(r.slice(hdr, 4), blk.TOut)
		binary.LittleEndian.PutUint64(r.slice(hdr+8, 8), uint64(i)*8)
		d := r.slice(r.data+4096*uint64(i), 4096)
		for j := range d {
			d[j] = byte(i)
		}
		if _, err := r.q.Add(virtiotest.Buf{Addr: hdr, Len: 16}, virtiotest.Buf{Addr: r.data + 4096*uint64(i), Len: 4096},
			virtiotest.Buf{Addr: r.status + uint64(i%64), Len: 1, Write: true}); err != nil {
			t.Fatal(err)
		}
	}
	r.q.KickIfNeeded(old)
	if _, err := r.q.Wait(n, timeout); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		clear(r.slice(r.data, 4096))
		if s, _ := r.req(blk.TIn, uint64(i)*8, 4096); s != blk.SOK {
			t.Fatal("read")
		}
		if d := r.slice(r.data, 4096); d[0] != byte(i) || d[4095] != byte(i) {
			t.Fatalf("block %d: %d", i, d[0])
		}
	}
}

func TestReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ro.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, blk.Config{Path: path, ReadOnly: true})
	if r.drv.Features&blk.FRO == 0 {
		t.Fatal("VIRTIO_BLK_F_RO not offered")
	}
	if s, _ := r.req(blk.TOut, 0, 512); s != blk.SIOErr {
		t.Fatalf("write to a read-only disk: status %d", s)
	}
	if s, _ := r.req(blk.TIn, 0, 512); s != blk.SOK || r.slice(r.data, 1)[0] != 7 {
		t.Fatal("read")
	}
}

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := blk.OpenFile(filepath.Join(dir, "missing"), 0, false); err == nil {
		t.Fatal("missing disk without size opened")
	}
	p := filepath.Join(dir, "x")
	f, err := blk.OpenFile(p, 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != 1<<20 {
		t.Fatal("size")
	}
	if _, err := blk.OpenFile(p, 0, false); err == nil {
		t.Fatal("a disk in use opened twice")
	}
	f.Close()
	// An existing file keeps its size.
	f, err = blk.OpenFile(p, 4<<20, false)
	if err != nil || f.Size() != 1<<20 {
		t.Fatalf("reopen: %v, size %d", err, f.Size())
	}
	f.Close()
}

// faulty wraps a file: writes may fail, and Sync may be held.
type faulty struct {
	*blk.File
	failWrites atomic.Bool
	syncs      atomic.Int64
	hold       chan struct{} // if non-nil, Sync waits for it
	syncing    chan struct{}
}

func (f *faulty) WriteAt(segs [][]byte, off int64) error {
	if f.failWrites.Load() {
		return syscall.ENOSPC
	}
	return f.File.WriteAt(segs, off)
}

func (f *faulty) Sync() error {
	if f.hold != nil {
		f.syncing <- struct{}{}
		<-f.hold
	}
	f.syncs.Add(1)
	return f.File.Sync()
}

func TestWriteError(t *testing.T) {
	file, err := blk.OpenFile(filepath.Join(t.TempDir(), "d"), 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	be := &faulty{File: file}
	r := newRig(t, blk.Config{Backend: be})
	be.failWrites.Store(true)
	if s, n := r.req(blk.TOut, 0, 4096); s != blk.SIOErr || n != 1 {
		t.Fatalf("ENOSPC: status %d len %d", s, n)
	}
	be.failWrites.Store(false)
	if s, _ := r.req(blk.TOut, 0, 4096); s != blk.SOK {
		t.Fatal("the device must keep working after an I/O error")
	}
}

// A flush completes only after the host's fdatasync returned.
func TestFlushWaitsForSync(t *testing.T) {
	file, err := blk.OpenFile(filepath.Join(t.TempDir(), "d"), 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	be := &faulty{File: file, hold: make(chan struct{}), syncing: make(chan struct{}, 1)}
	r := newRig(t, blk.Config{Backend: be})
	binary.LittleEndian.PutUint32(r.slice(r.hdr, 4), blk.TFlush)
	r.slice(r.status, 1)[0] = 0xee
	old := r.q.AvailIdx()
	r.q.Add(virtiotest.Buf{Addr: r.hdr, Len: 16}, virtiotest.Buf{Addr: r.status, Len: 1, Write: true})
	r.q.KickIfNeeded(old)
	select {
	case <-be.syncing:
	case <-time.After(timeout):
		t.Fatal("no fdatasync for a flush")
	}
	time.Sleep(20 * time.Millisecond)
	if u := r.q.Poll(); len(u) != 0 {
		t.Fatal("flush completed before fdatasync returned")
	}
	close(be.hold)
	if _, err := r.q.Wait(1, timeout); err != nil {
		t.Fatal(err)
	}
	if r.slice(r.status, 1)[0] != blk.SOK || be.syncs.Load() != 1 {
		t.Fatal("flush status")
	}
	// Close flushes too.
	r.tr.Close()
	if be.syncs.Load() != 2 {
		t.Fatalf("%d syncs after close, want 2", be.syncs.Load())
	}
}

// A chain that is malformed but ends in a status byte fails with IOERR.
func TestMalformedRequest(t *testing.T) {
	r := newRig(t, blk.Config{Path: filepath.Join(t.TempDir(), "d"), Size: 1 << 20})
	ids := r.q.TakeFree(3)
	binary.LittleEndian.PutUint32(r.slice(r.hdr, 4), blk.TIn)
	r.q.WriteDesc(ids[0], r.hdr, 16, virtio.DescFNext, ids[1])
	r.q.WriteDesc(ids[1], 1<<40, 512, virtio.DescFNext|virtio.DescFWrite, ids[2]) // outside memory
	r.q.WriteDesc(ids[2], r.status, 1, virtio.DescFWrite, 0)
	r.slice(r.status, 1)[0] = 0xee
	r.q.AddRaw(ids[0])
	r.q.Kick()
	u, err := r.q.Wait(1, timeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.slice(r.status, 1)[0] != blk.SIOErr || u[0].Len != 1 {
		t.Fatalf("status %d, len %d", r.slice(r.status, 1)[0], u[0].Len)
	}
	// No status byte at all: completed with nothing written.
	r.q.WriteDesc(ids[0], r.hdr, 16, 0, 0)
	r.q.AddRaw(ids[0])
	r.q.Kick()
	if u, err := r.q.Wait(1, timeout); err != nil || u[0].Len != 0 {
		t.Fatal("request without a status byte", err)
	}
	if s, _ := r.req(blk.TIn, 0, 512); s != blk.SOK {
		t.Fatal("device broken by malformed requests")
	}
}

var _ = errors.New
