package catalog

import (
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
