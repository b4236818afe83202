package storage_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/db/storage"
	"github.com/cumulusdb/cumulus/db/wal"
	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

// faultyDevice wraps a kapi block device and injects a full disk (Grow
// fails with ENOSPC, as it does on a full file system or a fixed-size
// device) or failing writes.
type faultyDevice struct {
	kapi.BlockDevice
	full       atomic.Bool
	failWrites atomic.Bool
	grows      atomic.Int64
}

func (d *faultyDevice) Grow(size int64) error {
	if d.full.Load() && size > d.BlockDevice.Size() {
		return fmt.Errorf("inject: grow %s to %d: %w", d.Name(), size, syscall.ENOSPC)
	}
	d.grows.Add(1)
	return d.BlockDevice.Grow(size)
}

func (d *faultyDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.failWrites.Load() {
		return 0, fmt.Errorf("inject: write %s at %d: %w", d.Name(), off, syscall.EIO)
	}
	if off+int64(len(p)) > d.BlockDevice.Size() {
		// The engine must never write where it has not allocated.
		return 0, fmt.Errorf("inject: write past allocated size at %d: %w", off, syscall.ENOSPC)
	}
	return d.BlockDevice.WriteAt(p, off)
}

func openFaulty(t *testing.T, path string) (*storage.DB, *faultyDevice) {
	t.Helper()
	dev, err := linux.Kernel{}.OpenBlock(path, kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	fd := &faultyDevice{BlockDevice: dev}
	db, err := storage.Open(path, &storage.Options{Device: fd, PoolSize: 2 << 20, WALSize: 2 << 20, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	return db, fd
}

func putRange(db *storage.DB, tbl *storage.Table, from, to int, tag string) error {
	return db.Update(func(tx *storage.Tx) error {
		for i := from; i < to; i++ {
			if err := tx.Put(tbl, u64(uint64(i)), []byte(fmt.Sprintf("%s-%d-%s", tag, i, bytes.Repeat([]byte("x"), 100)))); err != nil {
				return err
			}
		}
		return nil
	})
}

func TestFullDiskAbortsCleanly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	db, fd := openFaulty(t, path)
	tbl := mustTable(t, db, "t")
	for i := 0; i < 10; i++ {
		if err := putRange(db, tbl, i*200, (i+1)*200, "a"); err != nil {
			t.Fatal(err)
		}
	}
	fd.full.Store(true)
	// A transaction that needs new pages beyond the allocated space fails
	// before changing anything.
	err := putRange(db, tbl, 100000, 100400, "lost")
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("commit on a full disk: %v", err)
	}
	// The database is still usable: reads, and writes that fit.
	if err := putRange(db, tbl, 0, 5, "b"); err != nil {
		t.Fatalf("small update on a full disk: %v", err)
	}
	check := func(db *storage.DB) {
		t.Helper()
		err := db.View(func(tx *storage.Tx) error {
			n := 0
			err := tx.Scan(tbl, nil, nil, func(k, v []byte) bool { n++; return true })
			if n != 2000 {
				t.Fatalf("%d keys, want 2000", n)
			}
			if v, _, _ := tx.Get(tbl, u64(3)); !bytes.HasPrefix(v, []byte("b-3-")) {
				t.Fatalf("key 3 = %q", v)
			}
			if _, ok, _ := tx.Get(tbl, u64(100000)); ok {
				t.Fatal("aborted transaction's write is visible")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check(db)
	// Space comes back: big transactions work again.
	fd.full.Store(false)
	if err := putRange(db, tbl, 50000, 50400, "c"); err != nil {
		t.Fatalf("after space returned: %v", err)
	}
	if err := db.Update(func(tx *storage.Tx) error {
		for i := 50000; i < 50400; i++ {
			tx.Delete(tbl, u64(uint64(i)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, _ = openFaulty(t, path)
	defer db.Close()
	tbl2 := tbl
	db.View(func(tx *storage.Tx) error { tbl2, _ = tx.Table("t"); return nil })
	tbl = tbl2
	check(db)
}

func TestLogWriteFailureFailsDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	db, fd := openFaulty(t, path)
	tbl := mustTable(t, db, "t")
	if err := putRange(db, tbl, 0, 100, "a"); err != nil {
		t.Fatal(err)
	}
	fd.failWrites.Store(true)
	err := putRange(db, tbl, 100, 200, "b")
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("commit with failing log writes: %v", err)
	}
	if err := db.Update(func(tx *storage.Tx) error { return nil }); err == nil {
		t.Fatal("failed database accepted a transaction")
	}
	db.Close()
	db2, _ := openFaulty(t, path)
	defer db2.Close()
	db2.View(func(tx *storage.Tx) error {
		tbl, _ := tx.Table("t")
		n := 0
		tx.Scan(tbl, nil, nil, func(k, v []byte) bool { n++; return true })
		if n != 100 {
			t.Fatalf("recovered %d keys, want the 100 committed ones", n)
		}
		return nil
	})
}

func TestCorruptPageReported(t *testing.T) {
	db, path := openTest(t, &storage.Options{PoolSize: 1 << 20, WALSize: 1 << 20})
	tbl := mustTable(t, db, "t")
	for i := 0; i < 25; i++ {
		if err := putRange(db, tbl, i*200, (i+1)*200, "a"); err != nil {
			t.Fatal(err)
		}
	}
	pages := db.Stats().Pages
	db.Close()
	// Flip one byte in the middle of the last page.
	victim := int64(pages - 1)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	dataOff := int64(2*4096 + 1<<20)
	off := dataOff + victim*buffer.PageSize + 2000
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x5a
	f.WriteAt(b, off)
	f.Close()

	db, err = storage.Open(path, &storage.Options{PoolSize: 1 << 20, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *storage.Tx) error {
		tbl, _ := tx.Table("t")
		return tx.Scan(tbl, nil, nil, func(k, v []byte) bool { return true })
	})
	var ce *buffer.CorruptPageError
	if !errors.As(err, &ce) {
		t.Fatalf("scan over a corrupt page: %v", err)
	}
	if ce.PID != buffer.PID(victim) || ce.Offset != dataOff+victim*buffer.PageSize {
		t.Fatalf("corruption reported at page %d offset %d, want page %d offset %d", ce.PID, ce.Offset, victim, dataOff+victim*buffer.PageSize)
	}
	if err := db.Verify(); !errors.As(err, &ce) {
		t.Fatalf("Verify: %v", err)
	}
}

// findInLog returns the device offset of the first occurrence of pat.
func findInLog(t *testing.T, path string, pat []byte) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data[:2*4096+1<<20], pat)
	if i < 0 {
		t.Fatalf("%q not in the log", pat)
	}
	return int64(i)
}

func flipByte(t *testing.T, path string, off int64) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0xff
	f.WriteAt(b, off)
}

// crashedWithLog commits three transactions (three log flushes) and then
// abandons the database without closing it, as a crash would.
func crashedWithLog(t *testing.T) string {
	db, path := openTest(t, &storage.Options{PoolSize: 1 << 20, WALSize: 1 << 20})
	tbl := mustTable(t, db, "t")
	for i, m := range []string{"first-marker", "second-marker", "third-marker"} {
		if err := db.Update(func(tx *storage.Tx) error { return tx.Put(tbl, u64(uint64(i)), []byte(m)) }); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func TestCorruptLogRecordReported(t *testing.T) {
	path := crashedWithLog(t)
	off := findInLog(t, path, []byte("second-marker"))
	flipByte(t, path, off)
	_, err := storage.Open(path, &storage.Options{Logger: quietLogger})
	var ce *wal.CorruptError
	if !errors.As(err, &ce) {
		t.Fatalf("open with a corrupt acknowledged log record: %v", err)
	}
	if ce.Offset > off || off-ce.Offset > 4096 {
		t.Fatalf("corruption reported at device offset %d, damaged byte at %d", ce.Offset, off)
	}
}

func TestTornLogTailIgnored(t *testing.T) {
	path := crashedWithLog(t)
	// Damage the last flush, as a torn write would: it was the last one, so
	// it cannot have been acknowledged by a later flush.
	flipByte(t, path, findInLog(t, path, []byte("third-marker")))
	db, err := storage.Open(path, &storage.Options{Logger: quietLogger})
	if err != nil {
		t.Fatalf("open with a torn tail: %v", err)
	}
	defer db.Close()
	db.View(func(tx *storage.Tx) error {
		tbl, _ := tx.Table("t")
		var got []string
		tx.Scan(tbl, nil, nil, func(k, v []byte) bool { got = append(got, string(v)); return true })
		if fmt.Sprint(got) != "[first-marker second-marker]" {
			t.Fatalf("after torn tail: %v", got)
		}
		return nil
	})
}
