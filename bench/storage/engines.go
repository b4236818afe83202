package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/cumulusdb/cumulus/db/storage"
)

// engine is one key/value store under test. Every write method is one
// durable transaction: it returns after the data is on stable storage.
type engine interface {
	putBatch(keys, vals [][]byte) error
	update(key, val []byte) error
	get(key []byte) (bool, error)
	scan(start []byte, n int) (int, error)
	close() error
}

// ---- CumulusDB ----

type cumulus struct {
	db  *storage.DB
	tbl *storage.Table
}

func openCumulus(dir string, poolBytes int64, buffered bool) (engine, error) {
	db, err := storage.Open(filepath.Join(dir, "cumulus.db"), &storage.Options{
		PoolSize: poolBytes, Buffered: buffered, WALSize: 256 << 20,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, err
	}
	c := &cumulus{db: db}
	err = db.Update(func(tx *storage.Tx) error {
		t, err := tx.Table("kv")
		if errors.Is(err, storage.ErrNoTable) {
			t, err = tx.CreateTable("kv")
		}
		c.tbl = t
		return err
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return c, nil
}

func (c *cumulus) putBatch(keys, vals [][]byte) error {
	return c.db.Update(func(tx *storage.Tx) error {
		for i := range keys {
			if err := tx.Put(c.tbl, keys[i], vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

func (c *cumulus) update(key, val []byte) error {
	return c.db.Update(func(tx *storage.Tx) error { return tx.Put(c.tbl, key, val) })
}

func (c *cumulus) get(key []byte) (bool, error) {
	tx, err := c.db.Begin(false)
	if err != nil {
		return false, err
	}
	_, ok, err := tx.Get(c.tbl, key)
	if err != nil {
		return false, err
	}
	return ok, tx.Commit()
}

func (c *cumulus) scan(start []byte, n int) (int, error) {
	tx, err := c.db.Begin(false)
	if err != nil {
		return 0, err
	}
	got := 0
	err = tx.Scan(c.tbl, start, nil, func(k, v []byte) bool { got++; return got < n })
	if err != nil {
		return 0, err
	}
	return got, tx.Commit()
}

func (c *cumulus) close() error { return c.db.Close() }

// ---- Pebble ----

type pebbleEngine struct {
	db    *pebble.DB
	cache interface{ Unref() }
}

func openPebble(dir string, cacheBytes int64) (engine, error) {
	cache := pebble.NewCache(cacheBytes)
	db, err := pebble.Open(filepath.Join(dir, "pebble"), &pebble.Options{Cache: cache, Logger: quietPebble{}})
	if err != nil {
		cache.Unref()
		return nil, err
	}
	return &pebbleEngine{db: db, cache: cache}, nil
}

type quietPebble struct{}

func (quietPebble) Infof(string, ...interface{})  {}
func (quietPebble) Errorf(string, ...interface{}) {}
func (quietPebble) Fatalf(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, f, a...)
	os.Exit(1)
}

func (p *pebbleEngine) putBatch(keys, vals [][]byte) error {
	b := p.db.NewBatch()
	for i := range keys {
		b.Set(keys[i], vals[i], nil)
	}
	return b.Commit(pebble.Sync)
}

func (p *pebbleEngine) update(key, val []byte) error { return p.db.Set(key, val, pebble.Sync) }

func (p *pebbleEngine) get(key []byte) (bool, error) {
	_, closer, err := p.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, closer.Close()
}

func (p *pebbleEngine) scan(start []byte, n int) (int, error) {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: start})
	if err != nil {
		return 0, err
	}
	got := 0
	for it.First(); it.Valid() && got < n; it.Next() {
		_ = it.Value()
		got++
	}
	return got, it.Close()
}

func (p *pebbleEngine) close() error {
	err := p.db.Close()
	p.cache.Unref()
	return err
}

// ---- bbolt ----

type boltEngine struct{ db *bolt.DB }

var bucket = []byte("kv")

func openBolt(dir string) (engine, error) {
	db, err := bolt.Open(filepath.Join(dir, "bolt.db"), 0o600, &bolt.Options{NoFreelistSync: true})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err })
	if err != nil {
		db.Close()
		return nil, err
	}
	return &boltEngine{db: db}, nil
}

func (b *boltEngine) putBatch(keys, vals [][]byte) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucket)
		for i := range keys {
			if err := bk.Put(keys[i], vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *boltEngine) update(key, val []byte) error {
	return b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key, val) })
}

func (b *boltEngine) get(key []byte) (bool, error) {
	var ok bool
	err := b.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucket).Get(key) != nil
		return nil
	})
	return ok, err
}

func (b *boltEngine) scan(start []byte, n int) (int, error) {
	got := 0
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		for k, _ := c.Seek(start); k != nil && got < n; k, _ = c.Next() {
			got++
		}
		return nil
	})
	return got, err
}

func (b *boltEngine) close() error { return b.db.Close() }
