// Package catalog keeps CumulusDB's SQL schema: tables, their columns,
// primary keys and secondary indexes, stored as JSON records in one engine
// table and cached in memory. Schema changes are made inside an engine
// transaction and recorded in a Changes overlay that the session sees at
// once and everyone else sees after the transaction commits.
package catalog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/storage"
)

// MetaTable is the engine table holding the catalog.
const MetaTable = "sql_catalog"

// FirstOID is the OID of the first user table (as in PostgreSQL).
const FirstOID = 16384

// Column is a table column.
type Column struct {
	Name    string
	Type    datum.Type
	NotNull bool
	Default string `json:",omitempty"` // SQL expression text
}

// Index is a secondary index (or, with Primary, the primary key, which is
// the table's own key and has no storage of its own).
type Index struct {
	ID      uint32
	Name    string
	Cols    []int
	Unique  bool
	Primary bool `json:",omitempty"`
}

// Table is a table's schema.
type Table struct {
	ID      uint32
	Name    string
	Columns []Column
	// PK lists the primary key columns; empty means rows are keyed by a
	// hidden row id.
	PK      []int
	PKName  string `json:",omitempty"`
	Indexes []Index
	Gen     uint32 // bumped by TRUNCATE: new, empty storage
}

// OID is the table's pg_class OID.
func (t *Table) OID() uint32 { return FirstOID + 2*t.ID }

// DataName is the engine table holding the rows.
func (t *Table) DataName() string { return fmt.Sprintf("d%d.%d", t.ID, t.Gen) }

// IndexName is the engine table holding index ix.
func (t *Table) IndexName(ix *Index) string { return fmt.Sprintf("x%d.%d", ix.ID, t.Gen) }

// ColumnIndex returns the position of the named column, or -1.
func (t *Table) ColumnIndex(name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// Clone returns a deep copy for modification.
func (t *Table) Clone() *Table {
	n := *t
	n.Columns = append([]Column(nil), t.Columns...)
	n.PK = append([]int(nil), t.PK...)
	n.Indexes = make([]Index, len(t.Indexes))
	for i, ix := range t.Indexes {
		ix.Cols = append([]int(nil), ix.Cols...)
		n.Indexes[i] = ix
	}
	return &n
}

// Changes are a transaction's schema changes, not yet published.
type Changes struct {
	tables map[string]*Table // nil value: dropped
}

// Empty reports whether there are no changes.
func (ch *Changes) Empty() bool { return ch == nil || len(ch.tables) == 0 }

// Catalog is the schema of one database.
type Catalog struct {
	db      *storage.DB
	mu      sync.RWMutex
	tables  map[string]*Table
	version atomic.Uint64
	// Hidden row ids: an epoch bumped at every open, and a counter.
	rowEpoch uint64
	rowSeq   atomic.Uint64
}

// ErrNotFound is returned for missing tables.
var ErrNotFound = errors.New("catalog: not found")

// Open loads the catalog of db, creating it if needed.
func Open(db *storage.DB) (*Catalog, error) {
	c := &Catalog{db: db, tables: map[string]*Table{}}
	err := db.Update(func(tx *storage.Tx) error {
		c.tables = map[string]*Table{}
		meta, err := tx.Table(MetaTable)
		if errors.Is(err, storage.ErrNoTable) {
			if meta, err = tx.CreateTable(MetaTable); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		// Collect the heads first: continuation chunks are read with Get,
		// which must not run inside a scan callback.
		heads := map[string][]byte{}
		if err := tx.Scan(meta, []byte(tablePrefix), []byte("table0"), func(k, v []byte) bool {
			heads[string(k[len(tablePrefix):])] = append([]byte(nil), v...)
			return true
		}); err != nil {
			return err
		}
		for name, head := range heads {
			b, err := readRecord(tx, meta, name, head)
			if err != nil {
				return err
			}
			var t Table
			if e := json.Unmarshal(b, &t); e != nil {
				return fmt.Errorf("catalog: decode table %q: %w", name, e)
			}
			c.tables[t.Name] = &t
		}
		v, ok, err := tx.Get(meta, []byte("row_epoch"))
		if err != nil {
			return err
		}
		c.rowEpoch = 1
		if ok && len(v) == 8 {
			c.rowEpoch = binary.BigEndian.Uint64(v) + 1
		}
		return tx.Put(meta, []byte("row_epoch"), binary.BigEndian.AppendUint64(nil, c.rowEpoch))
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: open: %w", err)
	}
	return c, nil
}

// Version changes whenever published schema changes.
func (c *Catalog) Version() uint64 { return c.version.Load() }

// RowID returns a new hidden row id, unique across restarts.
func (c *Catalog) RowID() int64 {
	return int64(c.rowEpoch<<40 | c.rowSeq.Add(1))
}

// Lookup returns the table named name as the transaction with changes ch
// sees it, or nil.
func (c *Catalog) Lookup(ch *Changes, name string) *Table {
	if ch != nil {
		if t, ok := ch.tables[name]; ok {
			return t
		}
	}
	c.mu.RLock()
	t := c.tables[name]
	c.mu.RUnlock()
	return t
}

// Tables lists the tables the transaction sees, by name.
func (c *Catalog) Tables(ch *Changes) []*Table {
	c.mu.RLock()
	m := make(map[string]*Table, len(c.tables))
	for k, v := range c.tables {
		m[k] = v
	}
	c.mu.RUnlock()
	if ch != nil {
		for k, v := range ch.tables {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
	}
	out := make([]*Table, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// FindIndex returns the table owning the index named name, or nil.
func (c *Catalog) FindIndex(ch *Changes, name string) (*Table, *Index) {
	for _, t := range c.Tables(ch) {
		for i := range t.Indexes {
			if t.Indexes[i].Name == name {
				return t, &t.Indexes[i]
			}
		}
	}
	return nil, nil
}

func meta(tx *storage.Tx) (*storage.Table, error) {
	m, err := tx.Table(MetaTable)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	return m, nil
}

// NextID allocates a table or index id inside tx.
func (c *Catalog) NextID(tx *storage.Tx) (uint32, error) {
	m, err := meta(tx)
	if err != nil {
		return 0, err
	}
	v, ok, err := tx.Get(m, []byte("next_id"))
	if err != nil {
		return 0, fmt.Errorf("catalog: next id: %w", err)
	}
	id := uint32(1)
	if ok && len(v) == 4 {
		id = binary.BigEndian.Uint32(v)
	}
	if err := tx.Put(m, []byte("next_id"), binary.BigEndian.AppendUint32(nil, id+1)); err != nil {
		return 0, fmt.Errorf("catalog: next id: %w", err)
	}
	return id, nil
}

// Put records t (new or changed) in tx and in ch.
func (c *Catalog) Put(tx *storage.Tx, ch *Changes, t *Table) error {
	m, err := meta(tx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("catalog: put %q: %w", t.Name, err)
	}
	if err := writeRecord(tx, m, t.Name, b); err != nil {
		return fmt.Errorf("catalog: put %q: %w", t.Name, err)
	}
	if ch.tables == nil {
		ch.tables = map[string]*Table{}
	}
	ch.tables[t.Name] = t
	return nil
}

// Drop removes the table named name in tx and ch. Its storage is not
// reclaimed (the engine has no DROP yet).
func (c *Catalog) Drop(tx *storage.Tx, ch *Changes, name string) error {
	m, err := meta(tx)
	if err != nil {
		return err
	}
	if err := writeRecord(tx, m, name, nil); err != nil {
		return fmt.Errorf("catalog: drop %q: %w", name, err)
	}
	if ch.tables == nil {
		ch.tables = map[string]*Table{}
	}
	ch.tables[name] = nil
	return nil
}

// Publish makes committed changes visible to everyone.
func (c *Catalog) Publish(ch *Changes) {
	if ch.Empty() {
		return
	}
	c.mu.Lock()
	for k, v := range ch.tables {
		if v == nil {
			delete(c.tables, k)
		} else {
			c.tables[k] = v
		}
	}
	c.mu.Unlock()
	c.version.Add(1)
}

// NormalizeName folds an identifier as PostgreSQL does for unquoted names.
func NormalizeName(s string) string { return strings.ToLower(s) }

// A table's record lives under tablePrefix+name. The engine bounds a key
// plus its value to about 1 KiB (no overflow pages), which a wide table's
// JSON (TPC-C's customer: 21 columns) exceeds, so larger records are split:
// the head then starts with chunkedMark and a big-endian uint16 count of
// continuation chunks, stored under chunkPrefix+name+"/"+index. A plain
// record is JSON and starts with '{', so records written before chunking
// read unchanged.
const (
	tablePrefix = "table/"
	chunkPrefix = "tchunk/"
	chunkedMark = 0x01
	// chunkSize leaves room in MaxEntrySize for the key (names are short:
	// identifiers are at most 63 bytes in PostgreSQL) and the head's
	// 3-byte header.
	chunkSize = storage.MaxEntrySize - 256
)

func chunkKey(name string, i int) []byte {
	return fmt.Appendf(nil, "%s%s/%d", chunkPrefix, name, i)
}

// chunkCount returns how many continuation chunks the head value has.
func chunkCount(head []byte) int {
	if len(head) >= 3 && head[0] == chunkedMark {
		return int(binary.BigEndian.Uint16(head[1:3]))
	}
	return 0
}

// readRecord reassembles the record whose head value is head.
func readRecord(tx *storage.Tx, m *storage.Table, name string, head []byte) ([]byte, error) {
	n := chunkCount(head)
	if n == 0 {
		return head, nil
	}
	b := append([]byte(nil), head[3:]...)
	for i := 1; i <= n; i++ {
		v, ok, err := tx.Get(m, chunkKey(name, i))
		if err != nil {
			return nil, fmt.Errorf("catalog: table %q chunk %d: %w", name, i, err)
		}
		if !ok {
			return nil, fmt.Errorf("catalog: table %q: chunk %d of %d missing", name, i, n)
		}
		b = append(b, v...)
	}
	return b, nil
}

// writeRecord replaces the record of table name with b (nil: deletes it),
// removing continuation chunks the new record no longer uses. Reading the
// old head first puts it in the read set, so concurrent DDL on the same
// table conflicts at commit.
func writeRecord(tx *storage.Tx, m *storage.Table, name string, b []byte) error {
	if len(name) > 200 { // keeps key + head within MaxEntrySize (see chunkSize)
		return fmt.Errorf("table name of %d bytes is too long", len(name))
	}
	key := []byte(tablePrefix + name)
	old, _, err := tx.Get(m, key)
	if err != nil {
		return err
	}
	oldChunks := chunkCount(old)
	newChunks := 0
	switch {
	case b == nil:
		if err := tx.Delete(m, key); err != nil {
			return err
		}
	case len(b) <= chunkSize:
		if err := tx.Put(m, key, b); err != nil {
			return err
		}
	default:
		newChunks = (len(b) - 1) / chunkSize // the head holds the first chunk
		if newChunks > 0xffff {
			return fmt.Errorf("record of %d bytes is too large", len(b))
		}
		head := append([]byte{chunkedMark, byte(newChunks >> 8), byte(newChunks)}, b[:chunkSize]...)
		if err := tx.Put(m, key, head); err != nil {
			return err
		}
		for i := 1; i <= newChunks; i++ {
			part := b[i*chunkSize : min((i+1)*chunkSize, len(b))]
			if err := tx.Put(m, chunkKey(name, i), part); err != nil {
				return err
			}
		}
	}
	for i := newChunks + 1; i <= oldChunks; i++ {
		if err := tx.Delete(m, chunkKey(name, i)); err != nil {
			return err
		}
	}
	return nil
}
