package storage_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cumulusdb/cumulus/db/storage"
)

func openTest(t testing.TB, opts *storage.Options) (*storage.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "db")
	if opts == nil {
		opts = &storage.Options{PoolSize: 4 << 20, WALSize: 4 << 20}
	}
	opts.Logger = quietLogger
	db, err := storage.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return db, path
}

func mustTable(t testing.TB, db *storage.DB, name string) *storage.Table {
	t.Helper()
	var tbl *storage.Table
	err := db.Update(func(tx *storage.Tx) error {
		var err error
		tbl, err = tx.CreateTable(name)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func getU64(t testing.TB, tx *storage.Tx, tbl *storage.Table, k string) uint64 {
	v, ok, err := tx.Get(tbl, []byte(k))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func begin(t testing.TB, db *storage.DB, w bool) *storage.Tx {
	tx, err := db.Begin(w)
	if err != nil {
		t.Fatal(err)
	}
	return tx
}

func TestLostUpdateExcluded(t *testing.T) {
	db, _ := openTest(t, nil)
	defer db.Close()
	tbl := mustTable(t, db, "t")
	t1, t2 := begin(t, db, true), begin(t, db, true)
	a, b := getU64(t, t1, tbl, "c"), getU64(t, t2, tbl, "c")
	t1.Put(tbl, []byte("c"), u64(a+1))
	t2.Put(tbl, []byte("c"), u64(b+1))
	if err := t1.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := t2.Commit(); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("second read-modify-write committed: %v", err)
	}
	// Concurrent increments with retries: none may be lost.
	var wg sync.WaitGroup
	var commits atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				err := db.Update(func(tx *storage.Tx) error {
					v := getU64(t, tx, tbl, "c")
					return tx.Put(tbl, []byte("c"), u64(v+1))
				})
				if err != nil {
					t.Error(err)
					return
				}
				commits.Add(1)
			}
		}()
	}
	wg.Wait()
	tx := begin(t, db, false)
	if got := getU64(t, tx, tbl, "c"); got != uint64(commits.Load())+1 {
		t.Fatalf("counter %d after %d committed increments", got, commits.Load()+1)
	}
}

func TestWriteSkewExcluded(t *testing.T) {
	db, _ := openTest(t, nil)
	defer db.Close()
	tbl := mustTable(t, db, "t")
	db.Update(func(tx *storage.Tx) error {
		tx.Put(tbl, []byte("x"), u64(1))
		return tx.Put(tbl, []byte("y"), u64(1))
	})
	// Constraint: x + y >= 1. Each transaction takes one off if both are on.
	t1, t2 := begin(t, db, true), begin(t, db, true)
	if getU64(t, t1, tbl, "x")+getU64(t, t1, tbl, "y") == 2 {
		t1.Put(tbl, []byte("x"), u64(0))
	}
	if getU64(t, t2, tbl, "x")+getU64(t, t2, tbl, "y") == 2 {
		t2.Put(tbl, []byte("y"), u64(0))
	}
	if err := t1.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := t2.Commit(); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("write skew committed: %v", err)
	}
}

func TestPhantomExcluded(t *testing.T) {
	db, _ := openTest(t, nil)
	defer db.Close()
	tbl := mustTable(t, db, "t")
	db.Update(func(tx *storage.Tx) error {
		for i := 0; i < 10; i++ {
			tx.Put(tbl, []byte(fmt.Sprintf("item/%02d", i*2)), []byte("v"))
		}
		return nil
	})
	count := func(tx *storage.Tx) int {
		n := 0
		if err := tx.Scan(tbl, []byte("item/"), []byte("item0"), func(k, v []byte) bool { n++; return true }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	t1 := begin(t, db, true)
	n := count(t1)
	t1.Put(tbl, []byte("count"), u64(uint64(n)))
	t2 := begin(t, db, true)
	t2.Put(tbl, []byte("item/05"), []byte("new"))
	if err := t2.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := t1.Commit(); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("commit after a phantom insert: %v", err)
	}
	// An insert outside the scanned range does not conflict.
	t3 := begin(t, db, true)
	n = count(t3)
	t3.Put(tbl, []byte("count"), u64(uint64(n)))
	t4 := begin(t, db, true)
	t4.Put(tbl, []byte("other"), []byte("x"))
	t4.Commit()
	if err := t3.Commit(); err != nil {
		t.Fatalf("unrelated insert caused a conflict: %v", err)
	}
	// Nor does one after an early-stopped scan's last key.
	t5 := begin(t, db, true)
	seen := 0
	t5.Scan(tbl, []byte("item/"), nil, func(k, v []byte) bool { seen++; return seen < 2 })
	t5.Put(tbl, []byte("count"), u64(2))
	t6 := begin(t, db, true)
	t6.Put(tbl, []byte("item/99"), []byte("x"))
	t6.Commit()
	if err := t5.Commit(); err != nil {
		t.Fatalf("insert beyond the observed part of a scan caused a conflict: %v", err)
	}
}

func TestReadSkewExcluded(t *testing.T) {
	db, _ := openTest(t, nil)
	defer db.Close()
	tbl := mustTable(t, db, "t")
	db.Update(func(tx *storage.Tx) error {
		tx.Put(tbl, []byte("a"), u64(50))
		return tx.Put(tbl, []byte("b"), u64(50))
	})
	r := begin(t, db, false)
	a := getU64(t, r, tbl, "a")
	err := db.Update(func(tx *storage.Tx) error {
		tx.Put(tbl, []byte("a"), u64(getU64(t, tx, tbl, "a")-10))
		return tx.Put(tbl, []byte("b"), u64(getU64(t, tx, tbl, "b")+10))
	})
	if err != nil {
		t.Fatal(err)
	}
	b := getU64(t, r, tbl, "b")
	if a+b == 100 {
		t.Fatalf("test setup: expected to observe skew, saw %d+%d", a, b)
	}
	if err := r.Commit(); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("read-only transaction that saw %d+%d committed: %v", a, b, err)
	}
}

func TestDirtyReadsAndOwnWrites(t *testing.T) {
	db, _ := openTest(t, nil)
	defer db.Close()
	tbl := mustTable(t, db, "t")
	w := begin(t, db, true)
	w.Put(tbl, []byte("k1"), []byte("uncommitted"))
	w.Put(tbl, []byte("k3"), []byte("three"))
	r := begin(t, db, false)
	if _, ok, _ := r.Get(tbl, []byte("k1")); ok {
		t.Fatal("read an uncommitted write")
	}
	if v, ok, _ := w.Get(tbl, []byte("k1")); !ok || string(v) != "uncommitted" {
		t.Fatal("transaction does not read its own write")
	}
	db.Update(func(tx *storage.Tx) error { return tx.Put(tbl, []byte("k2"), []byte("two")) })
	var keys []string
	w.Delete(tbl, []byte("k3"))
	w.Put(tbl, []byte("k0"), []byte("zero"))
	w.Scan(tbl, nil, nil, func(k, v []byte) bool { keys = append(keys, string(k)+"="+string(v)); return true })
	if fmt.Sprint(keys) != "[k0=zero k1=uncommitted k2=two]" {
		t.Fatalf("scan with own writes: %v", keys)
	}
	w.Rollback()
	if err := w.Commit(); !errors.Is(err, storage.ErrTxDone) {
		t.Fatalf("commit after rollback: %v", err)
	}
	db.View(func(tx *storage.Tx) error {
		if _, ok, _ := tx.Get(tbl, []byte("k1")); ok {
			t.Fatal("rolled-back write visible")
		}
		return nil
	})
	ro := begin(t, db, false)
	if err := ro.Put(tbl, []byte("x"), nil); !errors.Is(err, storage.ErrReadOnly) {
		t.Fatalf("write in read-only transaction: %v", err)
	}
}

// TestBankInvariant runs concurrent transfers and audits. Serializability
// implies every committed audit sees the same total.
func TestBankInvariant(t *testing.T) {
	db, _ := openTest(t, &storage.Options{PoolSize: 1 << 20, WALSize: 4 << 20})
	defer db.Close()
	tbl := mustTable(t, db, "acct")
	const accounts, initial = 50, 1000
	db.Update(func(tx *storage.Tx) error {
		for i := 0; i < accounts; i++ {
			tx.Put(tbl, []byte(fmt.Sprintf("a%03d", i)), u64(initial))
		}
		return nil
	})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for i := 0; i < 300; i++ {
				from, to := fmt.Sprintf("a%03d", rng.IntN(accounts)), fmt.Sprintf("a%03d", rng.IntN(accounts))
				amt := uint64(rng.IntN(20))
				err := db.Update(func(tx *storage.Tx) error {
					f, to2 := getU64(t, tx, tbl, from), getU64(t, tx, tbl, to)
					if from == to || f < amt {
						return nil
					}
					tx.Put(tbl, []byte(from), u64(f-amt))
					return tx.Put(tbl, []byte(to), u64(to2+amt))
				})
				if err != nil && !errors.Is(err, storage.ErrConflict) {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	audits := 0
	var ag sync.WaitGroup
	ag.Add(1)
	go func() {
		defer ag.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var sum uint64
			err := db.View(func(tx *storage.Tx) error {
				sum = 0
				return tx.Scan(tbl, nil, nil, func(k, v []byte) bool { sum += binary.BigEndian.Uint64(v); return true })
			})
			if errors.Is(err, storage.ErrConflict) {
				continue
			}
			if err != nil {
				t.Error(err)
				return
			}
			if sum != accounts*initial {
				t.Errorf("committed audit saw total %d", sum)
				return
			}
			audits++
		}
	}()
	wg.Wait()
	close(stop)
	ag.Wait()
	if audits == 0 {
		t.Fatal("no audit committed")
	}
}

func TestOversizedRejected(t *testing.T) {
	db, _ := openTest(t, nil)
	defer db.Close()
	tbl := mustTable(t, db, "t")
	tx := begin(t, db, true)
	if err := tx.Put(tbl, make([]byte, storage.MaxKeySize+1), nil); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("oversized key: %v", err)
	}
	if err := tx.Put(tbl, []byte("k"), make([]byte, storage.MaxEntrySize)); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("oversized value: %v", err)
	}
	if err := tx.Put(tbl, []byte("k"), make([]byte, storage.MaxEntrySize-1)); err != nil {
		t.Fatalf("largest value: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	big := begin(t, db, true)
	for i := 0; i < 20000; i++ {
		big.Put(tbl, u64(uint64(i)), make([]byte, 500))
	}
	if err := big.Commit(); !errors.Is(err, storage.ErrTxTooLarge) {
		t.Fatalf("transaction larger than the log: %v", err)
	}
	if err := db.Update(func(tx *storage.Tx) error { return tx.Put(tbl, []byte("after"), nil) }); err != nil {
		t.Fatalf("database unusable after a rejected transaction: %v", err)
	}
}

func TestCreateTableConflict(t *testing.T) {
	db, path := openTest(t, nil)
	t1, t2 := begin(t, db, true), begin(t, db, true)
	a, _ := t1.CreateTable("x")
	b, _ := t2.CreateTable("x")
	t1.Put(a, []byte("k"), []byte("1"))
	t2.Put(b, []byte("k"), []byte("2"))
	if err := t1.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := t2.Commit(); !errors.Is(err, storage.ErrTableExists) {
		t.Fatalf("duplicate table: %v", err)
	}
	db.Close()
	db, err := storage.Open(path, &storage.Options{Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *storage.Tx) error {
		x, err := tx.Table("x")
		if err != nil {
			t.Fatal(err)
		}
		if v, _, _ := tx.Get(x, []byte("k")); string(v) != "1" {
			t.Fatalf("got %q", v)
		}
		if _, err := tx.Table("y"); !errors.Is(err, storage.ErrNoTable) {
			t.Fatalf("missing table: %v", err)
		}
		return nil
	})
}

// TestReadCommitted: a read-committed transaction's reads are not
// validated (a concurrent commit to what it read does not abort it), while
// the same history fails serializable validation; its own writes still
// commit atomically.
func TestReadCommitted(t *testing.T) {
	db, _ := openTest(t, &storage.Options{PoolSize: 1 << 20, WALSize: 4 << 20})
	defer db.Close()
	tbl := mustTable(t, db, "t")
	if err := db.Update(func(tx *storage.Tx) error { return tx.Put(tbl, []byte("a"), u64(1)) }); err != nil {
		t.Fatal(err)
	}
	for _, rc := range []bool{false, true} {
		tx, err := db.Begin(true)
		if err != nil {
			t.Fatal(err)
		}
		if rc {
			tx.SetReadCommitted(true)
		}
		a := getU64(t, tx, tbl, "a")
		if err := tx.Scan(tbl, nil, nil, func(k, v []byte) bool { return true }); err != nil {
			t.Fatal(err)
		}
		// A concurrent commit changes what tx read and adds to its range.
		if err := db.Update(func(o *storage.Tx) error {
			o.Put(tbl, []byte("z"), u64(9))
			return o.Put(tbl, []byte("a"), u64(a+1))
		}); err != nil {
			t.Fatal(err)
		}
		tx.Put(tbl, []byte("b"), u64(a))
		err = tx.Commit()
		if rc && err != nil {
			t.Fatalf("read committed: commit failed: %v", err)
		}
		if !rc && !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("serializable: commit after a concurrent change to its reads: %v, want ErrConflict", err)
		}
	}
	db.View(func(tx *storage.Tx) error {
		if b := getU64(t, tx, tbl, "b"); b != 2 {
			t.Errorf("b = %d, want 2 (the read-committed transaction's write)", b)
		}
		return nil
	})
}
