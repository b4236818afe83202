package catalog

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/storage"
)

func TestPersistOverlayAndRowIDs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	db, err := storage.Open(path, &storage.Options{PoolSize: 16 << 20, WALSize: 4 << 20, Buffered: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	id1 := c.RowID()
	tx, _ := db.Begin(true)
	ch := &Changes{}
	id, err := c.NextID(tx)
	if err != nil {
		t.Fatal(err)
	}
	tb := &Table{ID: id, Name: "t", Columns: []Column{{Name: "a", Type: datum.TInt4, NotNull: true}}, PK: []int{0}}
	if err := c.Put(tx, ch, tb); err != nil {
		t.Fatal(err)
	}
	if c.Lookup(ch, "t") == nil || c.Lookup(nil, "t") != nil {
		t.Fatal("a change must be visible to its transaction only")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	v := c.Version()
	c.Publish(ch)
	if c.Lookup(nil, "t") == nil || c.Version() == v {
		t.Fatal("published table missing")
	}
	db.Close()

	db, err = storage.Open(path, &storage.Options{PoolSize: 16 << 20, Buffered: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err = Open(db)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Lookup(nil, "t")
	if got == nil || got.Columns[0].Type != datum.TInt4 || len(got.PK) != 1 || got.OID() != tb.OID() {
		t.Fatalf("reloaded table: %+v", got)
	}
	if id2 := c.RowID(); id2 <= id1 {
		t.Fatalf("row ids must grow across restarts: %d then %d", id1, id2)
	}
	tx, _ = db.Begin(true)
	ch = &Changes{}
	if err := c.Drop(tx, ch, "t"); err != nil {
		t.Fatal(err)
	}
	if len(c.Tables(ch)) != 0 || len(c.Tables(nil)) != 1 {
		t.Fatal("drop overlay")
	}
	tx.Rollback()
}

// TestWideTableRecord: a record larger than the engine's entry limit is
// split into chunks, survives a reopen, shrinks back to one entry and is
// dropped with its chunks.
func TestWideTableRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	opts := &storage.Options{PoolSize: 16 << 20, WALSize: 4 << 20, Buffered: true}
	db, err := storage.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	wide := &Table{ID: 7, Name: "customer"}
	for i := 0; i < 60; i++ {
		wide.Columns = append(wide.Columns, Column{Name: fmt.Sprintf("column_with_a_long_name_%02d", i), Type: datum.TText, Default: "'x'"})
	}
	put := func(tb *Table) {
		t.Helper()
		tx, _ := db.Begin(true)
		ch := &Changes{}
		if err := c.Put(tx, ch, tb); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		c.Publish(ch)
	}
	put(wide)
	db.Close()

	db, err = storage.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if c, err = Open(db); err != nil {
		t.Fatal(err)
	}
	got := c.Lookup(nil, "customer")
	if got == nil || len(got.Columns) != 60 || got.Columns[59].Name != "column_with_a_long_name_59" {
		t.Fatalf("reloaded wide table: %+v", got)
	}
	narrow := got.Clone()
	narrow.Columns = narrow.Columns[:2]
	put(narrow)
	countChunks := func() int {
		n := 0
		db.View(func(tx *storage.Tx) error {
			m, _ := tx.Table(MetaTable)
			return tx.Scan(m, []byte(chunkPrefix), []byte("tchunk0"), func(k, v []byte) bool { n++; return true })
		})
		return n
	}
	if n := countChunks(); n != 0 {
		t.Fatalf("%d stale chunks after shrinking", n)
	}
	put(wide)
	if countChunks() == 0 {
		t.Fatal("wide record not chunked")
	}
	tx, _ := db.Begin(true)
	ch := &Changes{}
	if err := c.Drop(tx, ch, "customer"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := countChunks(); n != 0 {
		t.Fatalf("%d chunks left after drop", n)
	}
}
