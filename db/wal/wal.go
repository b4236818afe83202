// Package wal is CumulusDB's write-ahead log: a ring of blocks on the block
// device, written by one flusher goroutine that commits whatever has
// accumulated with a single write and flush (group commit).
//
// Addresses are LSNs: byte offsets in an endless log. LSN x lives at device
// offset Offset + x mod Size. The live log is [tail, end); tail advances when
// a checkpoint has made everything before it redundant, which is what lets
// the ring be reused.
//
// Record format (little endian), HeaderSize bytes then the payload:
//
//	crc   uint32  CRC-32C of the rest of the header and the payload
//	len   uint32  payload length
//	lsn   uint64  the record's own LSN: a record read at another position
//	              (a previous lap of the ring) is stale
//	dlsn  uint64  the durable LSN when the record was appended
//	epoch uint32  the log's incarnation; bumped each time the database opens
//	type  uint8
//	_     [3]byte
//
// Invariants:
//
//   - Every flush starts and ends on a block boundary: the flusher pads the
//     last block with a pad record. A flush therefore never rewrites a block
//     that holds durable records, so a torn flush can only damage records
//     that were never acknowledged.
//   - A record never starts in the last HeaderSize-1 bytes of a block; those
//     bytes are zero and readers skip them.
//   - Records are appended only by one goroutine at a time per group (the
//     storage engine's commit latch); groups are contiguous, so the end of
//     the log can only cut the last group.
//   - The end of the log is the first record that fails validation. If some
//     later block starts with a valid record whose dlsn lies beyond that
//     point, the failed record had been flushed and acknowledged: that is
//     corruption, reported with its location, not the end of the log.
package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"

	"github.com/cumulusdb/cumulus/kapi"
)

// BlockSize is the log's write granularity.
const BlockSize = 4096

// HeaderSize is the size of a record header.
const HeaderSize = 32

// TypePad is the record type the flusher uses to fill a block.
const TypePad = 1

// ErrFull is returned when an append would overwrite log space that a
// checkpoint has not yet released.
var ErrFull = errors.New("wal: log full")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Config describes where the ring lives.
type Config struct {
	Device kapi.BlockDevice
	Offset int64 // device offset of the ring, block aligned
	Size   int64 // ring size in bytes, a multiple of BlockSize
}

func (c Config) check() error {
	if c.Offset%BlockSize != 0 || c.Size%BlockSize != 0 || c.Size < 4*BlockSize {
		return fmt.Errorf("wal: ring [%d,+%d) not block aligned or smaller than 4 blocks", c.Offset, c.Size)
	}
	return nil
}

// Log appends records and makes them durable.
type Log struct {
	cfg   Config
	epoch uint32

	mu        sync.Mutex
	cond      sync.Cond
	buf       []byte // records [bufLSN, end), block aligned at bufLSN
	spare     []byte
	bufLSN    uint64
	end       uint64
	requested uint64
	closed    bool
	exited    bool  // the flusher has returned
	err       error // sticky: after a failed flush the log accepts nothing
	done      chan struct{}

	complete atomic.Uint64 // end of the last complete group
	durable  atomic.Uint64
	tail     atomic.Uint64
	flushes  atomic.Uint64
}

// Open starts a log that appends at start (block aligned) with the given
// epoch. Everything before start is treated as durable and released.
func Open(cfg Config, start uint64, epoch uint32) (*Log, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if start%BlockSize != 0 {
		return nil, fmt.Errorf("wal: start LSN %d not block aligned", start)
	}
	l := &Log{cfg: cfg, epoch: epoch, bufLSN: start, end: start, done: make(chan struct{})}
	l.cond.L = &l.mu
	l.buf = kapi.AlignedBuffer(1<<20, BlockSize)[:0]
	l.spare = kapi.AlignedBuffer(1<<20, BlockSize)[:0]
	l.complete.Store(start)
	l.durable.Store(start)
	l.tail.Store(start)
	go l.flusher()
	return l, nil
}

// Epoch returns the log's incarnation number.
func (l *Log) Epoch() uint32 { return l.epoch }

// End returns the LSN the next record will get (ignoring alignment).
func (l *Log) End() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.end
}

// Durable returns the LSN below which everything is on stable storage.
func (l *Log) Durable() uint64 { return l.durable.Load() }

// Flushes returns how many device flushes the log has issued.
func (l *Log) Flushes() uint64 { return l.flushes.Load() }

// SetTail releases the log before lsn for reuse.
func (l *Log) SetTail(lsn uint64) { l.tail.Store(lsn) }

// Tail returns the oldest LSN that is still needed.
func (l *Log) Tail() uint64 { return l.tail.Load() }

// Used returns the number of live bytes in the ring.
func (l *Log) Used() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.end - l.tail.Load()
}

// Capacity returns the ring size.
func (l *Log) Capacity() uint64 { return uint64(l.cfg.Size) }

// Err returns the log's sticky error.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func grow(b []byte, n int) []byte {
	if len(b)+n <= cap(b) {
		return b[:len(b)+n]
	}
	nb := kapi.AlignedBuffer(max(2*cap(b), len(b)+n), BlockSize)[:len(b)+n]
	copy(nb, b)
	return nb
}

// Append adds one record whose payload is the concatenation of parts and
// returns its LSN.
func (l *Log) Append(typ byte, parts ...[]byte) (uint64, error) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return 0, l.err
	}
	if l.closed {
		return 0, errors.New("wal: append to closed log")
	}
	if r := BlockSize - int(l.end%BlockSize); r < HeaderSize {
		// Keep headers inside one block; readers skip the zeros.
		l.buf = grow(l.buf, r)
		clear(l.buf[len(l.buf)-r:])
		l.end += uint64(r)
	}
	if l.end+uint64(HeaderSize+n)+BlockSize > l.tail.Load()+uint64(l.cfg.Size) {
		return 0, fmt.Errorf("wal: append %d bytes at %d with tail %d: %w", n, l.end, l.tail.Load(), ErrFull)
	}
	lsn := l.end
	l.buf = grow(l.buf, HeaderSize+n)
	rec := l.buf[len(l.buf)-HeaderSize-n:]
	putHeader(rec, uint32(n), lsn, l.durable.Load(), l.epoch, typ)
	off := HeaderSize
	for _, p := range parts {
		off += copy(rec[off:], p)
	}
	binary.LittleEndian.PutUint32(rec, crc32.Checksum(rec[4:], castagnoli))
	l.end += uint64(HeaderSize + n)
	return lsn, nil
}

func putHeader(h []byte, n uint32, lsn, dlsn uint64, epoch uint32, typ byte) {
	binary.LittleEndian.PutUint32(h[4:], n)
	binary.LittleEndian.PutUint64(h[8:], lsn)
	binary.LittleEndian.PutUint64(h[16:], dlsn)
	binary.LittleEndian.PutUint32(h[24:], epoch)
	h[28] = typ
	h[29], h[30], h[31] = 0, 0, 0
}

// EndGroup marks everything appended so far as a complete group and returns
// the group's end LSN.
func (l *Log) EndGroup() uint64 {
	l.mu.Lock()
	end := l.end
	l.mu.Unlock()
	l.complete.Store(end)
	return end
}

// Complete reports whether the record at lsn belongs to a complete group.
func (l *Log) Complete(lsn uint64) bool { return lsn < l.complete.Load() }

// Sync makes the log durable through the group holding lsn (for the buffer
// manager's WAL rule).
func (l *Log) Sync(lsn uint64) error {
	c := l.complete.Load()
	if lsn >= c {
		return fmt.Errorf("wal: sync of LSN %d in an unfinished group (complete %d)", lsn, c)
	}
	return l.WaitDurable(c)
}

// Request asks the flusher to make everything before lsn durable, without
// waiting for it.
func (l *Log) Request(lsn uint64) {
	if l.durable.Load() >= lsn {
		return
	}
	l.mu.Lock()
	if lsn > l.requested {
		l.requested = lsn
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}

// WaitDurable blocks until everything before lsn is durable.
func (l *Log) WaitDurable(lsn uint64) error {
	if l.durable.Load() >= lsn {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if lsn > l.requested {
		l.requested = lsn
		l.cond.Broadcast()
	}
	for l.durable.Load() < lsn && l.err == nil {
		if l.exited {
			return errors.New("wal: log closed before the record became durable")
		}
		l.cond.Wait()
	}
	return l.err
}

func (l *Log) flusher() {
	defer close(l.done)
	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() { l.exited = true; l.cond.Broadcast() }()
	for {
		for !l.closed && l.err == nil && l.requested <= l.bufLSN {
			l.cond.Wait()
		}
		if l.err != nil || (l.closed && l.end == l.bufLSN) {
			return
		}
		if l.end == l.bufLSN {
			// Requested LSN already covered by a previous pad.
			l.requested = l.bufLSN
			continue
		}
		if r := int(l.end % BlockSize); r != 0 {
			pad := BlockSize - r
			l.buf = grow(l.buf, pad)
			rec := l.buf[len(l.buf)-pad:]
			clear(rec)
			if pad >= HeaderSize {
				putHeader(rec, uint32(pad-HeaderSize), l.end, l.durable.Load(), l.epoch, TypePad)
				binary.LittleEndian.PutUint32(rec, crc32.Checksum(rec[4:], castagnoli))
			}
			l.end += uint64(pad)
		}
		data, start := l.buf, l.bufLSN
		l.buf, l.spare = l.spare[:0], nil
		l.bufLSN = l.end
		l.mu.Unlock()
		err := l.write(data, start)
		l.mu.Lock()
		l.spare = data[:0]
		if err != nil {
			l.err = fmt.Errorf("wal: flush [%d,%d): %w", start, start+uint64(len(data)), err)
			l.cond.Broadcast()
			return
		}
		l.flushes.Add(1)
		l.durable.Store(start + uint64(len(data)))
		l.cond.Broadcast()
	}
}

func (l *Log) write(data []byte, lsn uint64) error {
	size := uint64(l.cfg.Size)
	for len(data) > 0 {
		pos := lsn % size
		n := min(uint64(len(data)), size-pos)
		if _, err := l.cfg.Device.WriteAt(data[:n], l.cfg.Offset+int64(pos)); err != nil {
			return err
		}
		data, lsn = data[n:], lsn+n
	}
	return l.cfg.Device.Flush()
}

// Close flushes what was appended and stops the flusher.
func (l *Log) Close() error {
	l.mu.Lock()
	l.requested = l.end
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cond.Broadcast()
	return l.err
}

// CompleteLSN returns the end of the last complete group.
func (l *Log) CompleteLSN() uint64 { return l.complete.Load() }
