package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sort"

	"github.com/cumulusdb/cumulus/db/btree"
	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/db/wal"
)

// Every value in a table tree is prefixed with the commit timestamp of the
// transaction that wrote it; validation compares these.
const tsSize = 8

func decodeU64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
func decodePID(b []byte) buffer.PID {
	return buffer.PID(binary.LittleEndian.Uint64(b))
}

// Table is a handle to a table. Handles stay valid while the database is
// open; tables cannot be dropped.
type Table struct {
	name string
	tree *btree.Tree // nil while the creating transaction has not committed
}

// Name returns the table's name.
func (t *Table) Name() string { return t.name }

type write struct {
	val []byte
	del bool
}

type readEntry struct {
	t   *Table
	key string
	ts  uint64 // 0: absent
}

type scanEntry struct {
	t          *Table
	start, end []byte // end nil: unbounded
	hash       uint64
	count      int
}

// Tx is a transaction. A Tx is not safe for concurrent use.
type Tx struct {
	db       *DB
	writable bool
	done     bool
	startSeq uint64
	reads    []readEntry
	scans    []scanEntry
	writes   map[*Table]map[string]*write
	creates  []*Table
	buf      []byte
	async    bool
	// unvalidated: reads and scans are not recorded (SetReadCommitted).
	unvalidated bool
}

// SetReadCommitted(true) stops recording the transaction's reads and scans
// from then on: they are not validated at commit (see the package comment
// for what this gives up). Earlier reads stay validated. SetReadCommitted(
// false) records them again; reads made in between stay unvalidated, so a
// caller that wants a serializable transaction sets it before reading.
func (tx *Tx) SetReadCommitted(on bool) { tx.unvalidated = on }

// SetAsync makes Commit return once the transaction's writes are applied
// and logged, without waiting for the log to reach stable storage (as
// PostgreSQL's synchronous_commit = off): a crash may lose it, but never
// only part of it, and never a transaction that committed before it.
func (tx *Tx) SetAsync() { tx.async = true }

// Begin starts a transaction.
func (db *DB) Begin(writable bool) (*Tx, error) {
	if err := db.check(); err != nil {
		return nil, err
	}
	return &Tx{db: db, writable: writable, startSeq: db.seq.Load()}, nil
}

// Update runs fn in a read-write transaction and commits it, retrying up to
// 100 times on ErrConflict. fn must be safe to run more than once.
func (db *DB) Update(fn func(*Tx) error) error { return db.retry(true, fn) }

// View runs fn in a read-only transaction, retrying on ErrConflict.
func (db *DB) View(fn func(*Tx) error) error { return db.retry(false, fn) }

func (db *DB) retry(writable bool, fn func(*Tx) error) error {
	for attempt := 0; ; attempt++ {
		tx, err := db.Begin(writable)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			return err
		}
		err = tx.Commit()
		if !errors.Is(err, ErrConflict) || attempt >= 100 {
			return err
		}
		runtime.Gosched()
	}
}

func (tx *Tx) usable(write bool) error {
	if tx.done {
		return ErrTxDone
	}
	if write && !tx.writable {
		return ErrReadOnly
	}
	return tx.db.check()
}

// CreateTable creates a table; it exists once the transaction commits.
func (tx *Tx) CreateTable(name string) (*Table, error) {
	if err := tx.usable(true); err != nil {
		return nil, err
	}
	if len(name) == 0 || len(name) > MaxKeySize {
		return nil, fmt.Errorf("storage: create table: name of %d bytes: %w", len(name), ErrTooLarge)
	}
	if _, err := tx.Table(name); err == nil {
		return nil, fmt.Errorf("storage: create table %q: %w", name, ErrTableExists)
	}
	t := &Table{name: name}
	tx.creates = append(tx.creates, t)
	return t, nil
}

// Table returns the table with the given name.
func (tx *Tx) Table(name string) (*Table, error) {
	for _, t := range tx.creates {
		if t.name == name {
			return t, nil
		}
	}
	if t, ok := tx.db.tables.Load(name); ok {
		return t.(*Table), nil
	}
	return nil, fmt.Errorf("storage: table %q: %w", name, ErrNoTable)
}

func (tx *Tx) pendingWrite(t *Table, key []byte) (*write, bool) {
	if ws := tx.writes[t]; ws != nil {
		w, ok := ws[string(key)]
		return w, ok
	}
	return nil, false
}

// Get returns the value of key in t. The slice is the caller's.
func (tx *Tx) Get(t *Table, key []byte) ([]byte, bool, error) {
	if err := tx.usable(false); err != nil {
		return nil, false, err
	}
	if w, ok := tx.pendingWrite(t, key); ok {
		if w.del {
			return nil, false, nil
		}
		return append([]byte(nil), w.val...), true, nil
	}
	if t.tree == nil {
		return nil, false, nil // created by this transaction
	}
	v, found, err := t.tree.Get(key, tx.buf[:0])
	if err != nil {
		return nil, false, fmt.Errorf("storage: get: %w", err)
	}
	var ts uint64
	var out []byte
	if found {
		ts = decodeU64(v)
		out = append([]byte(nil), v[tsSize:]...)
		tx.buf = v
	}
	if !tx.unvalidated {
		tx.reads = append(tx.reads, readEntry{t: t, key: string(key), ts: ts})
	}
	return out, found, nil
}

func checkKV(key, val []byte) error {
	if len(key) > MaxKeySize || len(key)+len(val) > MaxEntrySize {
		return fmt.Errorf("storage: key of %d and value of %d bytes (limits: key %d, key+value %d): %w",
			len(key), len(val), MaxKeySize, MaxEntrySize, ErrTooLarge)
	}
	return nil
}

// Put sets key to val in t.
func (tx *Tx) Put(t *Table, key, val []byte) error {
	if err := tx.usable(true); err != nil {
		return err
	}
	if err := checkKV(key, val); err != nil {
		return err
	}
	tx.setWrite(t, key, &write{val: append([]byte(nil), val...)})
	return nil
}

// Delete removes key from t (a no-op if it is absent).
func (tx *Tx) Delete(t *Table, key []byte) error {
	if err := tx.usable(true); err != nil {
		return err
	}
	if len(key) > MaxKeySize {
		return fmt.Errorf("storage: delete: key of %d bytes: %w", len(key), ErrTooLarge)
	}
	tx.setWrite(t, key, &write{del: true})
	return nil
}

func (tx *Tx) setWrite(t *Table, key []byte, w *write) {
	if tx.writes == nil {
		tx.writes = map[*Table]map[string]*write{}
	}
	ws := tx.writes[t]
	if ws == nil {
		ws = map[string]*write{}
		tx.writes[t] = ws
	}
	ws[string(key)] = w
}

// scanHash folds one (key, ts) pair into an FNV-1a style hash.
func scanHash(h uint64, key []byte, ts uint64) uint64 {
	const prime = 1099511628211
	h = (h ^ uint64(len(key))) * prime
	for _, c := range key {
		h = (h ^ uint64(c)) * prime
	}
	return (h ^ ts) * prime
}

const hashSeed = 14695981039346656037

// Scan calls fn for the keys start <= key < end of t in order (end nil:
// unbounded), including this transaction's own writes, until fn returns
// false. The slices are valid only during the call.
func (tx *Tx) Scan(t *Table, start, end []byte, fn func(key, val []byte) bool) error {
	if err := tx.usable(false); err != nil {
		return err
	}
	// This transaction's writes in range, in order.
	var own []string
	ws := tx.writes[t]
	for k := range ws {
		if bytes.Compare([]byte(k), start) >= 0 && (end == nil || bytes.Compare([]byte(k), end) < 0) {
			own = append(own, k)
		}
	}
	sort.Strings(own)
	stopped := false
	deliverOwn := func(upto []byte) bool { // own writes with key < upto (nil: all)
		for len(own) > 0 && (upto == nil || own[0] < string(upto)) {
			k := own[0]
			own = own[1:]
			if w := ws[k]; !w.del && !fn([]byte(k), w.val) {
				return false
			}
		}
		return true
	}
	se := scanEntry{t: t, start: append([]byte(nil), start...), hash: hashSeed}
	if end != nil {
		se.end = append([]byte(nil), end...)
	}
	var lastKey []byte
	if t.tree != nil {
		err := t.tree.Scan(start, end, func(k, v []byte) bool {
			ts := decodeU64(v)
			se.hash = scanHash(se.hash, k, ts)
			se.count++
			lastKey = append(lastKey[:0], k...)
			if !deliverOwn(k) {
				stopped = true
				return false
			}
			if len(own) > 0 && own[0] == string(k) {
				w := ws[own[0]]
				own = own[1:]
				if !w.del && !fn(k, w.val) {
					stopped = true
					return false
				}
				return true
			}
			if !fn(k, v[tsSize:]) {
				stopped = true
				return false
			}
			return true
		})
		if err != nil {
			return fmt.Errorf("storage: scan: %w", err)
		}
	}
	if stopped {
		// Only [start, lastKey] was observed.
		se.end = append(lastKey, 0)
	} else {
		deliverOwn(nil)
	}
	if t.tree != nil && !tx.unvalidated {
		tx.scans = append(tx.scans, se)
	}
	return nil
}

// Rollback abandons the transaction.
func (tx *Tx) Rollback() { tx.done = true }

// validate checks the read and scan sets against the current state; the
// caller holds the commit latch or checks the commit sequence around it.
func (tx *Tx) validate() error {
	var buf []byte
	for _, r := range tx.reads {
		v, found, err := r.t.tree.Get([]byte(r.key), buf[:0])
		if err != nil {
			return fmt.Errorf("storage: validate: %w", err)
		}
		var ts uint64
		if found {
			ts = decodeU64(v)
			buf = v
		}
		if ts != r.ts {
			return fmt.Errorf("storage: key %q of table %q changed since it was read: %w", r.key, r.t.name, ErrConflict)
		}
	}
	for _, s := range tx.scans {
		h, n := uint64(hashSeed), 0
		err := s.t.tree.Scan(s.start, s.end, func(k, v []byte) bool {
			h = scanHash(h, k, decodeU64(v))
			n++
			return true
		})
		if err != nil {
			return fmt.Errorf("storage: validate: %w", err)
		}
		if h != s.hash || n != s.count {
			return fmt.Errorf("storage: range [%q,%q) of table %q changed since it was scanned: %w", s.start, s.end, s.t.name, ErrConflict)
		}
	}
	return nil
}

// Commit validates the transaction and, if it wrote, applies and durably
// logs its writes. On ErrConflict nothing was changed and the transaction
// may be retried. Any other error after validation means the database
// failed (see DB.fail) unless it wraps a space error from growing the
// device, which aborts just this transaction.
func (tx *Tx) Commit() error {
	if err := tx.usable(false); err != nil {
		return err
	}
	tx.done = true
	db := tx.db
	if len(tx.writes) == 0 && len(tx.creates) == 0 {
		return tx.commitReadOnly()
	}
	nPuts, bytes := 0, 0
	for _, ws := range tx.writes {
		for k, w := range ws {
			nPuts++
			bytes += wal.HeaderSize + 18 + len(k) + len(w.val) + tsSize
		}
	}
	// Splits log three page images each; a leaf splits about once per half
	// page of inserted data.
	splits := uint64(bytes/(buffer.PageSize/2) + 2 + 2*len(tx.creates))
	logNeed := uint64(bytes) + splits*3*(buffer.PageSize+wal.HeaderSize+8)
	if logNeed > db.log.Capacity()/2 {
		return fmt.Errorf("storage: commit: %d writes need ~%d log bytes, ring is %d: %w", nPuts, logNeed, db.log.Capacity(), ErrTxTooLarge)
	}
	// Pages a transaction modifies stay pinned until its group is complete,
	// so a transaction must fit in the pool with room to spare.
	if pin := uint64(nPuts + 16 + 2*len(tx.creates)); pin > db.pool.Capacity() {
		return fmt.Errorf("storage: commit: %d writes may pin %d pages, pool holds %d: %w", nPuts, pin, db.pool.Capacity(), ErrTxTooLarge)
	}
	for {
		if err := db.waitLogSpace(logNeed); err != nil {
			return err
		}
		db.commitMu.Lock()
		if err := db.check(); err != nil {
			db.commitMu.Unlock()
			return err
		}
		if db.log.Used()+logNeed <= db.log.Capacity()*3/4 {
			break
		}
		db.commitMu.Unlock() // someone took the space; wait again
	}
	end, err := tx.apply(nPuts)
	db.commitMu.Unlock()
	if err != nil {
		return err
	}
	if db.log.Used() > db.log.Capacity()/2 {
		db.kickCheckpoint()
	}
	if tx.async {
		db.log.Request(end)
		return nil
	}
	if err := db.log.WaitDurable(end); err != nil {
		return db.fail(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// apply runs under the commit latch.
func (tx *Tx) apply(nPuts int) (uint64, error) {
	db := tx.db
	if db.seq.Load() != tx.startSeq {
		if err := tx.validate(); err != nil {
			return 0, err
		}
	}
	for _, t := range tx.creates {
		if _, ok := db.tables.Load(t.name); ok {
			return 0, fmt.Errorf("storage: create table %q: %w", t.name, ErrTableExists)
		}
	}
	// A full disk must show up here, before anything changes.
	if err := db.pool.EnsureSpace(uint64(nPuts*4 + 16 + 2*len(tx.creates))); err != nil {
		return 0, fmt.Errorf("storage: commit aborted: %w", err)
	}
	db.seq.Add(1)
	defer db.seq.Add(1)
	ts := db.ts.Load() + 1
	var tsb [tsSize]byte
	binary.LittleEndian.PutUint64(tsb[:], ts)
	for _, t := range tx.creates {
		tree, err := btree.Create(db.pool, db.lg)
		if err != nil {
			return 0, db.fail(fmt.Errorf("commit: create table %q: %w", t.name, err))
		}
		if err := db.catalog.Put([]byte(t.name), pidBuf(tree.Root())); err != nil {
			return 0, db.fail(fmt.Errorf("commit: create table %q: %w", t.name, err))
		}
		t.tree = tree
	}
	val := make([]byte, 0, 256)
	for t, ws := range tx.writes {
		if t.tree == nil {
			return 0, db.fail(fmt.Errorf("commit: table %q was never created", t.name))
		}
		keys := make([]string, 0, len(ws))
		for k := range ws {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			w := ws[k]
			var err error
			if w.del {
				_, err = t.tree.Delete([]byte(k))
			} else {
				val = append(append(val[:0], tsb[:]...), w.val...)
				err = t.tree.Put([]byte(k), val)
			}
			if err != nil {
				return 0, db.fail(fmt.Errorf("commit: table %q: %w", t.name, err))
			}
		}
	}
	if _, err := db.log.Append(recCommit, tsb[:]); err != nil {
		return 0, db.fail(fmt.Errorf("commit: %w", err))
	}
	end := db.log.EndGroup()
	db.ts.Store(ts)
	for _, t := range tx.creates {
		db.tables.Store(t.name, t)
	}
	return end, nil
}

// commitReadOnly validates a read-only transaction. A single read is
// atomic by itself; otherwise the reads must be unchanged at one instant,
// which the commit sequence (odd while a commit applies) brackets without
// taking the commit latch.
func (tx *Tx) commitReadOnly() error {
	db := tx.db
	if len(tx.scans) == 0 && len(tx.reads) <= 1 {
		return nil
	}
	for attempt := 0; attempt < 4; attempt++ {
		s := db.seq.Load()
		if s%2 == 1 {
			// A commit is being applied: wait for it, then validate.
			runtime.Gosched()
			continue
		}
		// Nothing committed since Begin, and no commit was in flight at
		// Begin either (an odd startSeq means the reads may have seen a
		// half-applied commit: that case never matches an even s).
		if s == tx.startSeq {
			return nil
		}
		if err := tx.validate(); err != nil {
			return err
		}
		if db.seq.Load() == s {
			return nil
		}
	}
	db.commitMu.Lock()
	defer db.commitMu.Unlock()
	return tx.validate()
}
