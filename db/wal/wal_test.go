package wal_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cumulusdb/cumulus/db/wal"
	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

func device(t *testing.T, size int64) kapi.BlockDevice {
	t.Helper()
	d, err := linux.Kernel{}.OpenBlock(filepath.Join(t.TempDir(), "log"), kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Grow(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

type rec struct {
	lsn uint64
	typ byte
	p   string
}

func scanAll(t *testing.T, cfg wal.Config, start uint64, epoch uint32) ([]rec, uint64, error) {
	var out []rec
	end, err := wal.Scan(cfg, start, epoch, func(r wal.Record) error {
		out = append(out, rec{r.LSN, r.Type, string(r.Payload)})
		return nil
	})
	return out, end, err
}

func TestAppendScanGroupCommit(t *testing.T) {
	cfg := wal.Config{Device: device(t, 1<<20), Offset: 0, Size: 1 << 20}
	l, err := wal.Open(cfg, wal.BlockSize, 7)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var want []rec
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				p := fmt.Sprintf("g%d-i%d-%s", g, i, bytes.Repeat([]byte{'x'}, (g*i)%5000))
				mu.Lock()
				lsn, err := l.Append(5, []byte(p))
				end := l.EndGroup()
				want = append(want, rec{lsn, 5, p})
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
				if err := l.WaitDurable(end); err != nil {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	if l.Flushes() >= 400 {
		t.Errorf("%d flushes for 400 concurrent commits: no group commit", l.Flushes())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	got, _, err := scanAll(t, cfg, wal.BlockSize, 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("scanned %d records, appended %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("record %d: %v, want %v", i, got[i].lsn, want[i].lsn)
		}
	}
	// Another epoch sees nothing: stale records are not the log.
	if got, _, _ := scanAll(t, cfg, wal.BlockSize, 8); len(got) != 0 {
		t.Fatalf("epoch 8 scan found %d records", len(got))
	}
}

func TestRingWrapAndTail(t *testing.T) {
	const size = 64 << 10
	cfg := wal.Config{Device: device(t, size), Size: size}
	l, err := wal.Open(cfg, wal.BlockSize, 1)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("r"), 3000)
	var last uint64
	n := 0
	for ; ; n++ {
		lsn, err := l.Append(4, payload)
		if errors.Is(err, wal.ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = lsn
	}
	if n < 10 {
		t.Fatalf("only %d records fit", n)
	}
	end := l.EndGroup()
	if err := l.WaitDurable(end); err != nil {
		t.Fatal(err)
	}
	// Release the first half and keep appending across the ring's end.
	l.SetTail(last - size/2)
	var lsns []uint64
	for i := 0; i < 8; i++ {
		lsn, err := l.Append(4, payload)
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, lsn)
	}
	end = l.EndGroup()
	l.WaitDurable(end)
	l.Close()
	if lsns[len(lsns)-1]+3000 < size+wal.BlockSize {
		t.Fatal("test did not wrap the ring")
	}
	// Scan from the first record at or after the new tail.
	var recs []rec
	_, err = wal.Scan(cfg, lsns[0], 1, func(r wal.Record) error {
		recs = append(recs, rec{r.LSN, r.Type, ""})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(lsns) {
		t.Fatalf("after wrap scanned %d records, want %d", len(recs), len(lsns))
	}
	for i := range lsns {
		if recs[i].lsn != lsns[i] {
			t.Fatalf("record %d at %d, want %d", i, recs[i].lsn, lsns[i])
		}
	}
}

// TestTornTailVersusCorruption damages the log in two places: the last
// flush (a torn write: the log simply ends earlier) and an earlier flush
// (corruption: a later flush proves the damaged record had been durable).
func TestTornTailVersusCorruption(t *testing.T) {
	dev := device(t, 1<<20)
	cfg := wal.Config{Device: dev, Size: 1 << 20}
	l, _ := wal.Open(cfg, wal.BlockSize, 3)
	var lsns []uint64
	for i := 0; i < 3; i++ {
		lsn, _ := l.Append(4, []byte(fmt.Sprintf("flush-%d", i)))
		lsns = append(lsns, lsn)
		l.WaitDurable(l.EndGroup())
	}
	l.Close()
	flip := func(lsn uint64) {
		b := make([]byte, 1)
		off := int64(lsn) + wal.HeaderSize + 2
		dev.ReadAt(b, off)
		b[0] ^= 1
		dev.WriteAt(b, off)
	}
	flip(lsns[2])
	got, end, err := scanAll(t, cfg, wal.BlockSize, 3)
	if err != nil || len(got) != 2 || end != lsns[2] {
		t.Fatalf("torn tail: %d records, end %d, err %v", len(got), end, err)
	}
	flip(lsns[2]) // repair
	flip(lsns[1])
	_, _, err = scanAll(t, cfg, wal.BlockSize, 3)
	var ce *wal.CorruptError
	if !errors.As(err, &ce) || ce.LSN != lsns[1] || ce.Offset != int64(lsns[1]) {
		t.Fatalf("corruption before a later flush: %v", err)
	}
}
