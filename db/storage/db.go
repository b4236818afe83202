// Package storage is CumulusDB's embedded storage engine: tables are
// B+trees (package btree) on a vmcache-style buffer pool (package buffer),
// made durable by a write-ahead log (package wal), all on one block device
// or file reached through kapi.
//
// # Transactions and isolation
//
// Transactions are serializable, in fact strictly serializable in commit
// order. They run optimistically: reads go straight to the trees (no locks),
// writes are buffered in the transaction, and Commit validates and applies
// under the engine's commit latch:
//
//   - every key the transaction read must still carry the commit timestamp
//     it had (or still be absent), and
//   - every range it scanned must still contain exactly the same keys with
//     the same timestamps (no phantoms),
//
// then the buffered writes are applied and logged as one group ending in a
// commit record. Because validation and application happen atomically with
// respect to other commits, a committed transaction behaves as if it ran
// entirely at its commit point. A transaction that fails validation gets
// ErrConflict and changes nothing; Update retries those. This excludes dirty
// reads and writes, lost updates, non-repeatable and phantom reads, read
// skew and write skew (see the tests). Read-only transactions are validated
// too, without the latch when no commit intervened.
//
// What is not guaranteed: a transaction that will fail validation may have
// observed an inconsistent state before Commit told it so (no opacity), and
// reads may return data of a transaction whose commit is logged but not yet
// durable; that transaction's durability precedes any later commit that
// depended on it, because the log is sequential.
//
// Tx.SetReadCommitted(true) weakens this per transaction, for callers that
// serialise their writers themselves (the SQL layer's row locks): reads
// made after it are not validated, so such a transaction never fails with
// ErrConflict. It still reads only committed data (writes are applied at
// commit), and its writes are still atomic and durable, but it may observe
// a concurrent commit partially, and nothing stops a lost update unless the
// caller locks what it writes.
//
// Writers run concurrently up to Commit; the apply step is serialised by the
// commit latch (no page latch is held across it, so readers are never
// blocked by it), and the durable flush is shared by all committers waiting
// at that moment (group commit).
//
// # Durability and recovery
//
// Commit returns after the transaction's commit record is on stable storage.
// Pages are written back later (eviction, checkpoints) under the WAL rule.
// Open redoes the log from the last checkpoint, applying exactly the groups
// that have a commit record, then checkpoints. Checkpoints run in the
// background when half the log ring is in use, so the log never needs more
// than its ring.
//
// # Limits
//
// Keys are at most MaxKeySize bytes and a key plus its value at most
// MaxEntrySize bytes (no overflow pages). Pages freed by deletes are not
// reused by other parts of the tree (no merges).
package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/cumulusdb/cumulus/db/btree"
	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/db/wal"
	"github.com/cumulusdb/cumulus/kapi"
	_ "github.com/cumulusdb/cumulus/kapi/linux" // the fallback kernel
)

// Size limits of keys and values.
const (
	MaxKeySize = btree.MaxKeySize
	// MaxEntrySize bounds len(key)+len(value).
	MaxEntrySize = btree.MaxEntrySize - tsSize
)

// Errors.
var (
	ErrConflict    = errors.New("storage: transaction conflict")
	ErrTooLarge    = btree.ErrTooLarge
	ErrNoTable     = errors.New("storage: no such table")
	ErrTableExists = errors.New("storage: table exists")
	ErrTxDone      = errors.New("storage: transaction already committed or rolled back")
	ErrReadOnly    = errors.New("storage: write in a read-only transaction")
	ErrTxTooLarge  = errors.New("storage: transaction too large for the log or the buffer pool")
	ErrClosed      = errors.New("storage: database closed")
)

// Options configure Open. The zero value works.
type Options struct {
	// Kernel supplies memory and devices; default kapi.Default().
	Kernel kapi.Kernel
	// Device, if set, is used instead of opening the path (for wrappers,
	// such as fault injection).
	Device kapi.BlockDevice
	// PoolSize is the buffer pool size in bytes (default 256 MiB).
	PoolSize int64
	// MaxSize is the largest database in bytes: the virtual range reserved
	// for pages (default 64 GiB).
	MaxSize int64
	// WALSize is the log ring size in bytes, used when creating a database
	// (default 64 MiB).
	WALSize int64
	// Buffered makes device I/O go through the host's page cache.
	Buffered bool
	// Logger receives events; default slog.Default().
	Logger *slog.Logger
}

// DB is an open database.
type DB struct {
	opts   Options
	dev    kapi.BlockDevice
	ownDev bool
	pool   *buffer.Pool
	log    *wal.Log
	lg     logger
	slog   *slog.Logger

	catalog *btree.Tree
	tables  sync.Map // name -> *Table

	commitMu sync.Mutex
	seq      atomic.Uint64 // odd while a commit applies
	ts       atomic.Uint64 // last commit timestamp

	sbMu sync.Mutex
	sb   superblock

	ckMu      sync.Mutex // one checkpoint at a time
	ckKick    chan struct{}
	ckDone    chan struct{}
	ckWait    sync.Cond
	ckWaitMu  sync.Mutex
	ckCount   uint64
	ckErr     error
	failed    atomic.Pointer[error]
	closed    atomic.Bool
	closeOnce sync.Once
}

// Open opens or creates the database at path (a file or block device).
func Open(path string, opts *Options) (*DB, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.PoolSize == 0 {
		o.PoolSize = 256 << 20
	}
	if o.MaxSize == 0 {
		o.MaxSize = 64 << 30
	}
	if o.WALSize == 0 {
		o.WALSize = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Kernel == nil {
		k, err := kapi.Default()
		if err != nil {
			return nil, err
		}
		o.Kernel = k
	}
	db := &DB{opts: o, slog: o.Logger, ckKick: make(chan struct{}, 1), ckDone: make(chan struct{})}
	db.ckWait.L = &db.ckWaitMu
	db.dev = o.Device
	if db.dev == nil {
		dev, err := o.Kernel.OpenBlock(path, kapi.BlockOptions{Create: true, Buffered: o.Buffered})
		if err != nil {
			return nil, fmt.Errorf("storage: open: %w", err)
		}
		db.dev, db.ownDev = dev, true
	}
	if err := db.open(); err != nil {
		if db.pool != nil {
			db.pool.Close()
		}
		if db.ownDev {
			db.dev.Close()
		}
		return nil, err
	}
	go db.checkpointer()
	return db, nil
}

func (db *DB) open() error {
	sb, ok, err := readSuperblock(db.dev)
	if err != nil {
		return err
	}
	if !ok {
		if sb, err = db.format(); err != nil {
			return err
		}
	}
	db.sb = sb
	poolPages := uint64(db.opts.PoolSize / buffer.PageSize)
	db.pool, err = buffer.New(buffer.Config{
		Memory: db.opts.Kernel.Memory(), Device: db.dev, DataOffset: sb.dataOff(),
		MaxPages: uint64(db.opts.MaxSize / buffer.PageSize), PoolPages: max(poolPages, 64),
	})
	if err != nil {
		return fmt.Errorf("storage: open: %w", err)
	}
	db.pool.SetNextPID(buffer.PID(sb.nextPID))
	if err := db.recover(); err != nil {
		return err
	}
	db.catalog = btree.Open(db.pool, catalogRoot, db.lg)
	return db.catalog.Scan(nil, nil, func(k, v []byte) bool {
		name := string(k)
		db.tables.Store(name, &Table{name: name, tree: btree.Open(db.pool, decodePID(v), db.lg)})
		return true
	})
}

// format writes an empty database: superblocks, an empty catalog page and
// a zeroed start of the log ring.
func (db *DB) format() (superblock, error) {
	walSize := uint64(db.opts.WALSize) &^ (wal.BlockSize - 1)
	// The log starts at LSN BlockSize, not 0: page LSN 0 means "no record
	// applied", so no record may have LSN 0.
	sb := superblock{gen: 1, walSize: walSize, ckLSN: wal.BlockSize, epoch: rand.Uint32() | 1, nextPID: uint64(catalogRoot) + 1}
	if err := db.dev.Grow(sb.dataOff() + 2*buffer.PageSize); err != nil {
		return sb, fmt.Errorf("storage: format: %w", err)
	}
	zero := kapi.AlignedBuffer(wal.BlockSize, wal.BlockSize)
	if _, err := db.dev.WriteAt(zero, walOffset); err != nil {
		return sb, fmt.Errorf("storage: format: %w", err)
	}
	page := kapi.AlignedBuffer(buffer.PageSize, buffer.PageSize)
	btree.InitPage(page)
	buffer.StampPID(page, catalogRoot)
	buffer.SetChecksum(page)
	if _, err := db.dev.WriteAt(page, sb.dataOff()+int64(catalogRoot)*buffer.PageSize); err != nil {
		return sb, fmt.Errorf("storage: format: %w", err)
	}
	if err := db.dev.Flush(); err != nil {
		return sb, fmt.Errorf("storage: format: %w", err)
	}
	// Slot 0 stays zero; generation 1 goes to slot 1.
	if err := writeSuperblock(db.dev, sb); err != nil {
		return sb, err
	}
	db.slog.Info("storage: created database", "device", db.dev.Name(), "wal_bytes", walSize)
	return sb, nil
}

func (db *DB) walConfig() wal.Config {
	return wal.Config{Device: db.dev, Offset: walOffset, Size: int64(db.sb.walSize)}
}

// recover redoes the log after the last checkpoint, checkpoints, and starts
// a new log epoch.
func (db *DB) recover() error {
	sb := db.sb
	db.pool.SetAllowZeroPages(true)
	var group []redoRecord
	var groupBytes int
	groups, records := 0, 0
	maxTS := sb.commitTS
	var applyErr error
	end, err := wal.Scan(db.walConfig(), sb.ckLSN, sb.epoch, func(r wal.Record) error {
		if r.Type == recCommit {
			for _, rec := range group {
				if err := redo(db.pool, rec); err != nil {
					applyErr = err
					return err
				}
			}
			if len(r.Payload) >= 8 {
				maxTS = max(maxTS, decodeU64(r.Payload))
			}
			groups++
			records += len(group)
			group, groupBytes = group[:0], 0
			return nil
		}
		rec, err := decodeRecord(r)
		if err != nil {
			return err
		}
		group = append(group, rec)
		groupBytes += len(r.Payload)
		return nil
	})
	if applyErr != nil {
		return applyErr
	}
	if err != nil {
		return fmt.Errorf("storage: recovery: %w", err)
	}
	db.ts.Store(maxTS)
	start := (end + wal.BlockSize - 1) &^ (wal.BlockSize - 1)
	if groups > 0 || len(group) > 0 || end != sb.ckLSN {
		db.slog.Info("storage: recovered", "device", db.dev.Name(), "from_lsn", sb.ckLSN, "to_lsn", end,
			"transactions", groups, "records", records, "discarded_records", len(group))
	}
	// Make the redone pages durable and start a new epoch after the old log,
	// so stale records after it can never be mistaken for new ones.
	if err := db.pool.FlushAll(); err != nil {
		return fmt.Errorf("storage: recovery checkpoint: %w", err)
	}
	db.pool.SetAllowZeroPages(false)
	nsb := sb
	nsb.gen++
	nsb.ckLSN = start
	nsb.epoch = sb.epoch + 1
	nsb.nextPID = uint64(db.pool.NextPID())
	nsb.commitTS = maxTS
	if err := writeSuperblock(db.dev, nsb); err != nil {
		return err
	}
	db.sb = nsb
	db.log, err = wal.Open(db.walConfig(), start, nsb.epoch)
	if err != nil {
		return err
	}
	db.lg = logger{db.log}
	db.pool.SetGate(db.log)
	return nil
}

// fail poisons the database after an error that left memory ahead of (or
// different from) what recovery would produce. Every later call returns
// the error; reopening recovers the committed state.
func (db *DB) fail(err error) error {
	err = fmt.Errorf("storage: database failed, reopen to recover: %w", err)
	db.failed.CompareAndSwap(nil, &err)
	db.slog.Error("storage: database failed", "err", err)
	return err
}

func (db *DB) check() error {
	if p := db.failed.Load(); p != nil {
		return *p
	}
	if db.closed.Load() {
		return ErrClosed
	}
	return nil
}

// checkpointer runs checkpoints when the log is half full.
func (db *DB) checkpointer() {
	defer close(db.ckDone)
	for range db.ckKick {
		if db.closed.Load() {
			return
		}
		err := db.Checkpoint()
		if err != nil && db.check() == nil {
			db.slog.Error("storage: checkpoint failed", "err", err)
		}
	}
}

func (db *DB) kickCheckpoint() {
	select {
	case db.ckKick <- struct{}{}:
	default:
	}
}

// Checkpoint writes all dirty pages and releases the log before the point
// where it began.
func (db *DB) Checkpoint() error {
	if err := db.check(); err != nil {
		return err
	}
	db.ckMu.Lock()
	defer db.ckMu.Unlock()
	err := db.checkpoint()
	db.ckWaitMu.Lock()
	db.ckCount++
	db.ckErr = err
	db.ckWait.Broadcast()
	db.ckWaitMu.Unlock()
	return err
}

func (db *DB) checkpoint() error {
	// Everything before ck belongs to complete groups; a group in progress
	// starts at or after it.
	ck := db.log.CompleteLSN()
	if err := db.pool.FlushAll(); err != nil {
		return db.fail(fmt.Errorf("checkpoint: %w", err))
	}
	// Redo must find the log durable from ck on.
	if err := db.log.WaitDurable(ck); err != nil {
		return db.fail(fmt.Errorf("checkpoint: %w", err))
	}
	db.sbMu.Lock()
	defer db.sbMu.Unlock()
	nsb := db.sb
	nsb.gen++
	nsb.ckLSN = ck
	nsb.nextPID = uint64(db.pool.NextPID())
	nsb.commitTS = db.ts.Load()
	if err := writeSuperblock(db.dev, nsb); err != nil {
		return db.fail(fmt.Errorf("checkpoint: %w", err))
	}
	db.sb = nsb
	db.log.SetTail(ck)
	return nil
}

// waitLogSpace blocks until the log has room for need more bytes,
// running checkpoints as required.
func (db *DB) waitLogSpace(need uint64) error {
	limit := db.log.Capacity() * 3 / 4
	for db.log.Used()+need > limit {
		db.ckWaitMu.Lock()
		n := db.ckCount
		db.kickCheckpoint()
		for db.ckCount == n && db.check() == nil {
			db.ckWait.Wait()
		}
		err := db.ckErr
		db.ckWaitMu.Unlock()
		if err := db.check(); err != nil {
			return err
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Close checkpoints and closes the database. Transactions still open fail.
func (db *DB) Close() error {
	var err error
	db.closeOnce.Do(func() {
		failed := db.check() != nil
		if !failed {
			db.commitMu.Lock() // wait for an in-flight apply
			err = db.Checkpoint()
			db.closed.Store(true)
			db.commitMu.Unlock()
		}
		db.closed.Store(true)
		close(db.ckKick)
		db.ckWaitMu.Lock()
		db.ckWait.Broadcast()
		db.ckWaitMu.Unlock()
		<-db.ckDone
		err = errors.Join(err, db.log.Close(), db.pool.Close())
		if db.ownDev {
			err = errors.Join(err, db.dev.Close())
		}
	})
	return err
}

// Stats are engine counters.
type Stats struct {
	Pool       buffer.Stats
	LogFlushes uint64
	LogUsed    uint64
	Pages      uint64
}

// Stats returns engine counters.
func (db *DB) Stats() Stats {
	return Stats{Pool: db.pool.Stats(), LogFlushes: db.log.Flushes(), LogUsed: db.log.Used(),
		Pages: uint64(db.pool.NextPID())}
}

// Verify checks the structure of every table's B+tree (ordering,
// separators, leaf chain) and reads every page, so corruption is reported
// with its location. It is meant for tests and offline checks.
func (db *DB) Verify() error {
	if _, err := db.catalog.Check(); err != nil {
		return fmt.Errorf("storage: verify catalog: %w", err)
	}
	var err error
	db.tables.Range(func(k, v any) bool {
		t := v.(*Table)
		if _, e := t.tree.Check(); e != nil {
			err = fmt.Errorf("storage: verify table %q: %w", t.name, e)
			return false
		}
		return true
	})
	return err
}
