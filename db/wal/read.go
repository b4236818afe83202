package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/cumulusdb/cumulus/kapi"
)

// Record is one log record as read back.
type Record struct {
	LSN     uint64
	Type    byte
	Payload []byte // valid only during the callback
}

// End returns the LSN just past the record.
func (r Record) End() uint64 { return r.LSN + HeaderSize + uint64(len(r.Payload)) }

// CorruptError reports a log record that failed validation although later
// records prove it had been durable.
type CorruptError struct {
	LSN    uint64
	Offset int64 // device offset
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("wal: corrupt log record at LSN %d (device offset %d): %s", e.LSN, e.Offset, e.Reason)
}

type ring struct {
	data []byte
	size uint64
}

// copyAt copies n bytes at lsn, wrapping at the ring's end.
func (r ring) at(lsn uint64, n int) []byte {
	pos := lsn % r.size
	if pos+uint64(n) <= r.size {
		return r.data[pos : pos+uint64(n)]
	}
	out := make([]byte, n)
	k := copy(out, r.data[pos:])
	copy(out[k:], r.data)
	return out
}

// parse validates the record at lsn and returns it, or why it is invalid.
func (r ring) parse(lsn uint64, epoch uint32, limit uint64) (Record, uint64, string) {
	if BlockSize-lsn%BlockSize < HeaderSize {
		return Record{}, 0, "header crosses a block"
	}
	h := r.at(lsn, HeaderSize)
	n := uint64(binary.LittleEndian.Uint32(h[4:]))
	if got := binary.LittleEndian.Uint64(h[8:]); got != lsn {
		return Record{}, 0, fmt.Sprintf("record claims LSN %d", got)
	}
	if lsn+HeaderSize+n > limit {
		return Record{}, 0, fmt.Sprintf("length %d runs past the live log", n)
	}
	body := r.at(lsn, int(HeaderSize+n))
	if binary.LittleEndian.Uint32(body) != crc32.Checksum(body[4:], castagnoli) {
		return Record{}, 0, "checksum mismatch"
	}
	if got := binary.LittleEndian.Uint32(h[24:]); got != epoch {
		return Record{}, 0, fmt.Sprintf("record from epoch %d, expected %d", got, epoch)
	}
	dlsn := binary.LittleEndian.Uint64(h[16:])
	return Record{LSN: lsn, Type: h[28], Payload: body[HeaderSize:]}, dlsn, ""
}

// Scan reads the log from start and calls fn for every valid record except
// pads, in order. It returns the LSN where the valid log ends. A record that
// fails validation ends the log unless a later flush survived, in which case
// Scan returns a *CorruptError.
func Scan(cfg Config, start uint64, epoch uint32, fn func(Record) error) (uint64, error) {
	if err := cfg.check(); err != nil {
		return 0, err
	}
	buf := kapi.AlignedBuffer(int(cfg.Size), BlockSize)
	if _, err := cfg.Device.ReadAt(buf, cfg.Offset); err != nil {
		return 0, fmt.Errorf("wal: read ring: %w", err)
	}
	r := ring{data: buf, size: uint64(cfg.Size)}
	limit := start + r.size
	pos := start
	for pos < limit {
		if rem := BlockSize - pos%BlockSize; rem < HeaderSize {
			pos += rem
			continue
		}
		rec, _, why := r.parse(pos, epoch, limit)
		if why != "" {
			if err := r.checkTail(cfg, pos, epoch, limit, why); err != nil {
				return pos, err
			}
			return pos, nil
		}
		if rec.Type != TypePad {
			if err := fn(rec); err != nil {
				return pos, err
			}
		}
		pos = rec.End()
	}
	return pos, nil
}

// checkTail looks for evidence that the log goes on after an invalid record
// at bad: a valid record at a later block start that was appended after the
// invalid one had become durable.
func (r ring) checkTail(cfg Config, bad uint64, epoch uint32, limit uint64, why string) error {
	for b := (bad/BlockSize + 1) * BlockSize; b+HeaderSize <= limit; b += BlockSize {
		rec, dlsn, w := r.parse(b, epoch, limit)
		if w == "" && dlsn > bad {
			_ = rec
			return &CorruptError{LSN: bad, Offset: cfg.Offset + int64(bad%r.size),
				Reason: fmt.Sprintf("%s, but the record at LSN %d was written after it was durable", why, b)}
		}
	}
	return nil
}
