package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/kapi"
)

// Device layout:
//
//	[0, 4096)          superblock slot 0
//	[4096, 8192)       superblock slot 1
//	[8192, +walSize)   write-ahead log ring
//	dataOff + p*4096   page p (page 0 is never used; page 1 is the catalog)
//
// The superblock is written alternately to the two slots with a growing
// generation number, so a torn superblock write leaves the other slot
// intact; Open uses the valid slot with the highest generation.
const (
	sbSize      = 4096
	walOffset   = 2 * sbSize
	catalogRoot = buffer.PID(1)
	formatVer   = 1
)

var magic = []byte("CUMULUS\x01")

type superblock struct {
	gen      uint64
	walSize  uint64
	ckLSN    uint64 // redo starts here; the log before it is released
	epoch    uint32 // epoch of the log records after ckLSN
	nextPID  uint64
	commitTS uint64
}

func (sb *superblock) dataOff() int64 { return walOffset + int64(sb.walSize) }

func (sb *superblock) encode() []byte {
	b := kapi.AlignedBuffer(sbSize, sbSize)
	copy(b, magic)
	binary.LittleEndian.PutUint32(b[8:], formatVer)
	binary.LittleEndian.PutUint32(b[12:], buffer.PageSize)
	binary.LittleEndian.PutUint64(b[16:], sb.gen)
	binary.LittleEndian.PutUint64(b[24:], sb.walSize)
	binary.LittleEndian.PutUint64(b[32:], sb.ckLSN)
	binary.LittleEndian.PutUint32(b[40:], sb.epoch)
	binary.LittleEndian.PutUint64(b[48:], sb.nextPID)
	binary.LittleEndian.PutUint64(b[56:], sb.commitTS)
	binary.LittleEndian.PutUint32(b[sbSize-4:], crc32.Checksum(b[:sbSize-4], castagnoli))
	return b
}

func decodeSuperblock(b []byte) (superblock, string) {
	if !bytes.Equal(b[:8], magic) {
		return superblock{}, "bad magic"
	}
	if crc32.Checksum(b[:sbSize-4], castagnoli) != binary.LittleEndian.Uint32(b[sbSize-4:]) {
		return superblock{}, "checksum mismatch"
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVer {
		return superblock{}, fmt.Sprintf("format version %d, want %d", v, formatVer)
	}
	if ps := binary.LittleEndian.Uint32(b[12:]); ps != buffer.PageSize {
		return superblock{}, fmt.Sprintf("page size %d, want %d", ps, buffer.PageSize)
	}
	return superblock{
		gen:      binary.LittleEndian.Uint64(b[16:]),
		walSize:  binary.LittleEndian.Uint64(b[24:]),
		ckLSN:    binary.LittleEndian.Uint64(b[32:]),
		epoch:    binary.LittleEndian.Uint32(b[40:]),
		nextPID:  binary.LittleEndian.Uint64(b[48:]),
		commitTS: binary.LittleEndian.Uint64(b[56:]),
	}, ""
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readSuperblock returns the newest valid superblock; ok is false for a
// device that has never been formatted (both slots zero).
func readSuperblock(dev kapi.BlockDevice) (sb superblock, ok bool, err error) {
	if dev.Size() < walOffset {
		return sb, false, nil
	}
	buf := kapi.AlignedBuffer(2*sbSize, sbSize)
	if _, err := dev.ReadAt(buf, 0); err != nil {
		return sb, false, fmt.Errorf("storage: read superblock: %w", err)
	}
	var reasons [2]string
	found := false
	blank := true
	for i := 0; i < 2; i++ {
		slot := buf[i*sbSize : (i+1)*sbSize]
		if !allZero(slot) {
			blank = false
		}
		s, why := decodeSuperblock(slot)
		reasons[i] = why
		if why == "" && (!found || s.gen > sb.gen) {
			sb, found = s, true
		}
	}
	if found {
		return sb, true, nil
	}
	if blank {
		return sb, false, nil
	}
	return sb, false, fmt.Errorf("storage: no valid superblock on %s (slot 0 at offset 0: %s; slot 1 at offset %d: %s)",
		dev.Name(), reasons[0], sbSize, reasons[1])
}

func writeSuperblock(dev kapi.BlockDevice, sb superblock) error {
	if _, err := dev.WriteAt(sb.encode(), int64(sb.gen%2)*sbSize); err != nil {
		return fmt.Errorf("storage: write superblock: %w", err)
	}
	if err := dev.Flush(); err != nil {
		return fmt.Errorf("storage: write superblock: %w", err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
