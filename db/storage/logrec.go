package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/cumulusdb/cumulus/db/btree"
	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/db/wal"
)

// Log record types (payload layouts, little endian):
//
//	recCommit  ts u64                      ends a group: one transaction
//	recImage   pid u64, page [PageSize]    full page image (splits, new pages)
//	recPut     pid u64, klen u16, key, val leaf put on page pid
//	recDelete  pid u64, key                leaf delete on page pid
//
// Redo is physiological: each record names its page and is applied iff the
// page's LSN is below the record's, which makes redo idempotent and lets it
// run on pages in any mixture of old and new states. A group is applied only
// if its commit record made it to the log.
const (
	recCommit = 2
	recImage  = 3
	recPut    = 4
	recDelete = 5
)

// logger adapts the WAL to btree.Logger.
type logger struct{ log *wal.Log }

func pidBuf(pid buffer.PID) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(pid))
	return b[:]
}

func (l logger) PageImage(pid buffer.PID, page []byte) (uint64, error) {
	return l.log.Append(recImage, pidBuf(pid), page)
}

func (l logger) LeafPut(pid buffer.PID, key, val []byte) (uint64, error) {
	hdr := make([]byte, 10)
	binary.LittleEndian.PutUint64(hdr, uint64(pid))
	binary.LittleEndian.PutUint16(hdr[8:], uint16(len(key)))
	return l.log.Append(recPut, hdr, key, val)
}

func (l logger) LeafDelete(pid buffer.PID, key []byte) (uint64, error) {
	return l.log.Append(recDelete, pidBuf(pid), key)
}

// redoRecord is a decoded page record kept until its group's commit.
type redoRecord struct {
	lsn  uint64
	typ  byte
	pid  buffer.PID
	key  []byte
	val  []byte // for recImage: the page
	size int
}

func decodeRecord(r wal.Record) (redoRecord, error) {
	p := r.Payload
	bad := func(why string) error {
		return fmt.Errorf("storage: log record at LSN %d (type %d): %s", r.LSN, r.Type, why)
	}
	if len(p) < 8 {
		return redoRecord{}, bad("payload too short")
	}
	rec := redoRecord{lsn: r.LSN, typ: r.Type, pid: buffer.PID(binary.LittleEndian.Uint64(p))}
	p = append([]byte(nil), p[8:]...)
	switch r.Type {
	case recImage:
		if len(p) != buffer.PageSize {
			return rec, bad("page image of wrong size")
		}
		rec.val = p
	case recPut:
		if len(p) < 2 {
			return rec, bad("payload too short")
		}
		kl := int(binary.LittleEndian.Uint16(p))
		if 2+kl > len(p) {
			return rec, bad("key length beyond payload")
		}
		rec.key, rec.val = p[2:2+kl], p[2+kl:]
	case recDelete:
		rec.key = p
	default:
		return rec, bad("unknown record type")
	}
	return rec, nil
}

// redo applies one page record to the pool.
func redo(pool *buffer.Pool, rec redoRecord) error {
	if err := pool.InstallPage(rec.pid); err != nil {
		return fmt.Errorf("storage: redo LSN %d on page %d: %w", rec.lsn, rec.pid, err)
	}
	page := pool.Page(rec.pid)
	if buffer.PageLSN(page) >= rec.lsn {
		pool.UnlockExclusive(rec.pid, false)
		return nil
	}
	var err error
	switch rec.typ {
	case recImage:
		copy(page, rec.val)
		buffer.StampPID(page, rec.pid)
	case recPut:
		err = btree.RedoPut(rec.pid, page, rec.key, rec.val)
	case recDelete:
		err = btree.RedoDelete(rec.pid, page, rec.key)
	}
	if err == nil {
		buffer.SetPageLSN(page, rec.lsn)
	}
	pool.UnlockExclusive(rec.pid, err == nil)
	if err != nil {
		return fmt.Errorf("storage: redo LSN %d: %w", rec.lsn, err)
	}
	return nil
}
