//go:build linux

package linux_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

func TestDefaultIsLinux(t *testing.T) {
	k, err := kapi.Default()
	if err != nil {
		t.Fatal(err)
	}
	if k.Name() != "linux" {
		t.Fatalf("Default() = %q", k.Name())
	}
}

func TestReserveAllocateDiscard(t *testing.T) {
	m := linux.Kernel{}.Memory()
	ps := uintptr(m.PageSize())
	const align = 2 << 20
	r, err := m.Reserve(64*ps, align)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free(r)
	if r.Len() != 64*ps {
		t.Fatalf("len %d", r.Len())
	}
	if !kapi.Aligned(r.Mem, align) {
		t.Fatal("region not aligned")
	}
	if err := m.Allocate(r, 0, 64*ps); err != nil {
		t.Fatal(err)
	}
	res := make([]bool, 64)
	if err := m.ResidentBatch(r, 0, res); err != nil {
		t.Fatal(err)
	}
	for i, v := range res {
		if v {
			t.Fatalf("page %d resident before first touch", i)
		}
	}
	r.Mem[3*ps] = 42
	r.Mem[5*ps+7] = 43
	if ok, err := m.Resident(r, 3*ps+100); err != nil || !ok {
		t.Fatalf("touched page not resident: %v %v", ok, err)
	}
	if err := m.ResidentBatch(r, 0, res); err != nil {
		t.Fatal(err)
	}
	for i, v := range res {
		if v != (i == 3 || i == 5) {
			t.Fatalf("page %d resident=%v", i, v)
		}
	}
	if err := m.Discard(r, 3*ps, ps); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.Resident(r, 3*ps); ok {
		t.Fatal("page resident after Discard")
	}
	if r.Mem[3*ps] != 0 {
		t.Fatal("discarded page does not read as zero")
	}
	if r.Mem[5*ps+7] != 43 {
		t.Fatal("Discard touched a neighbouring page")
	}
	if err := m.Discard(r, 1, ps); err == nil {
		t.Fatal("unaligned Discard accepted")
	}
	if err := m.Discard(r, 0, 65*ps); err == nil {
		t.Fatal("Discard past the region accepted")
	}
	st, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Total == 0 || st.Resident == 0 || st.Available > st.Total {
		t.Fatalf("implausible stats %+v", st)
	}
}

func TestBlockDevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dev")
	k := linux.Kernel{}
	if _, err := k.OpenBlock(path, kapi.BlockOptions{}); err == nil {
		t.Fatal("opened a missing device without Create")
	}
	d, err := k.OpenBlock(path, kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 0 {
		t.Fatalf("new device size %d", d.Size())
	}
	if err := d.Grow(1 << 20); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 1<<20 {
		t.Fatalf("size after grow %d", d.Size())
	}
	bs := d.BlockSize()
	buf := kapi.AlignedBuffer(2*bs, bs)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	if _, err := d.WriteAt(buf, int64(4*bs)); err != nil {
		t.Fatal(err)
	}
	// Unaligned write and read go through the bounce path.
	if _, err := d.WriteAt([]byte("hello"), int64(4*bs+10)); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := kapi.AlignedBuffer(2*bs, bs)
	if _, err := d.ReadAt(got, int64(4*bs)); err != nil {
		t.Fatal(err)
	}
	copy(buf[10:], "hello")
	if !bytes.Equal(got, buf) {
		t.Fatal("read back differs")
	}
	small := make([]byte, 5)
	if _, err := d.ReadAt(small, int64(4*bs+10)); err != nil || string(small) != "hello" {
		t.Fatalf("unaligned read %q %v", small, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != 1<<20 {
		t.Fatalf("file size after close: %v %v", st, err)
	}
	d2, err := k.OpenBlock(path, kapi.BlockOptions{Buffered: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Size() != 1<<20 {
		t.Fatalf("reopened size %d", d2.Size())
	}
	if _, err := d2.ReadAt(small, int64(4*bs+10)); err != nil || string(small) != "hello" {
		t.Fatalf("buffered read %q %v", small, err)
	}
}

func TestGrowBlockNodeIsFixed(t *testing.T) {
	// /dev/null is not a block device; loop devices need root. Check the
	// error contract on a regular file instead: growing by a huge amount on a
	// real file system reports ENOSPC or EFBIG, never success.
	path := filepath.Join(t.TempDir(), "dev")
	d, err := linux.Kernel{}.OpenBlock(path, kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.Grow(1 << 62)
	if err == nil {
		t.Fatal("growing to 4 EiB succeeded")
	}
	if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EFBIG) && !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unexpected error %v", err)
	}
	if d.Size() != 0 {
		t.Fatalf("failed grow changed size to %d", d.Size())
	}
}
