package buffer_test

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

// gate records the WAL rule's calls; pages with LSN >= incomplete belong to
// an unfinished group.
type gate struct {
	incomplete atomic.Uint64
	synced     atomic.Uint64
}

func (g *gate) Complete(lsn uint64) bool { return lsn < g.incomplete.Load() }
func (g *gate) Sync(lsn uint64) error {
	if lsn >= g.incomplete.Load() {
		return errors.New("sync of an unfinished group")
	}
	for {
		s := g.synced.Load()
		if s >= lsn || g.synced.CompareAndSwap(s, lsn) {
			return nil
		}
	}
}

func newPool(t *testing.T, poolPages uint64, g buffer.Gate) (*buffer.Pool, kapi.BlockDevice) {
	t.Helper()
	k := linux.Kernel{}
	dev, err := k.OpenBlock(filepath.Join(t.TempDir(), "data"), kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	p, err := buffer.New(buffer.Config{Memory: k.Memory(), Device: dev, DataOffset: 8192, MaxPages: 1 << 16, PoolPages: poolPages, Gate: g})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.SetNextPID(1)
	return p, dev
}

func fill(page []byte, pid buffer.PID, lsn uint64) {
	for i := buffer.HeaderSize; i < len(page); i += 8 {
		binary.LittleEndian.PutUint64(page[i:], uint64(pid)*1000+uint64(i))
	}
	buffer.SetPageLSN(page, lsn)
}

func check(t *testing.T, page []byte, pid buffer.PID) {
	t.Helper()
	for i := buffer.HeaderSize; i < len(page); i += 8 {
		if binary.LittleEndian.Uint64(page[i:]) != uint64(pid)*1000+uint64(i) {
			t.Fatalf("page %d byte %d wrong after reload", pid, i)
		}
	}
}

func TestEvictFaultRoundTrip(t *testing.T) {
	g := &gate{}
	g.incomplete.Store(1 << 62)
	p, _ := newPool(t, 32, g)
	const n = 200
	for i := 0; i < n; i++ {
		pid, err := p.AllocPage()
		if err != nil {
			t.Fatal(err)
		}
		fill(p.Page(pid), pid, uint64(100+i))
		p.UnlockExclusive(pid, true)
	}
	if st := p.Stats(); st.Resident > 32 || st.Evictions == 0 || st.Writes == 0 {
		t.Fatalf("pool of 32 pages after 200 allocations: %+v", st)
	}
	if g.synced.Load() == 0 {
		t.Fatal("dirty pages written without syncing the log")
	}
	for pid := buffer.PID(1); pid <= n; pid++ {
		tok, err := p.ReadOptimistic(pid)
		if err != nil {
			t.Fatal(err)
		}
		page := append([]byte(nil), p.Page(pid)...)
		if !p.Validate(pid, tok) {
			continue // evicted again in between; fine
		}
		check(t, page, pid)
		if buffer.PageLSN(page) != uint64(99+pid) {
			t.Fatalf("page %d LSN %d", pid, buffer.PageLSN(page))
		}
	}
	if st := p.Stats(); st.Faults == 0 {
		t.Fatal("no page was faulted back in")
	}
}

func TestUnfinishedGroupPinsPages(t *testing.T) {
	g := &gate{}
	g.incomplete.Store(50) // pages with LSN >= 50 must stay
	p, _ := newPool(t, 16, g)
	var pinned []buffer.PID
	for i := 0; i < 10; i++ {
		pid, _ := p.AllocPage()
		fill(p.Page(pid), pid, 60) // unfinished group
		p.UnlockExclusive(pid, true)
		pinned = append(pinned, pid)
	}
	for i := 0; i < 40; i++ {
		pid, err := p.AllocPage()
		if err != nil {
			t.Fatal(err)
		}
		fill(p.Page(pid), pid, 10)
		p.UnlockExclusive(pid, true)
	}
	for _, pid := range pinned {
		// A resident page never faults: Faults stays put while reading it.
		before := p.Stats().Faults
		tok, err := p.ReadOptimistic(pid)
		if err != nil || p.Stats().Faults != before || !p.Validate(pid, tok) {
			t.Fatalf("page %d of an unfinished group was evicted", pid)
		}
	}
	// With everything pinned and the pool full, allocation reports it.
	g.incomplete.Store(0)
	for i := 0; i < 16; i++ {
		pid, err := p.AllocPage()
		if err != nil {
			if !errors.Is(err, buffer.ErrPoolExhausted) {
				t.Fatal(err)
			}
			return
		}
		fill(p.Page(pid), pid, 70)
		p.UnlockExclusive(pid, true)
	}
	t.Fatal("a pool full of pinned pages kept allocating")
}

func TestChecksumDetectsCorruption(t *testing.T) {
	p, dev := newPool(t, 16, nil)
	var pids []buffer.PID
	for i := 0; i < 40; i++ {
		pid, _ := p.AllocPage()
		fill(p.Page(pid), pid, 1)
		p.UnlockExclusive(pid, true)
		pids = append(pids, pid)
	}
	if err := p.FlushAll(); err != nil {
		t.Fatal(err)
	}
	// Page 3 is certainly evicted after 40 allocations in 16 frames. Damage
	// its device image.
	victim := buffer.PID(3)
	off := int64(8192) + int64(victim)*buffer.PageSize + 100
	b := []byte{0}
	dev.ReadAt(b, off)
	b[0] ^= 0x80
	dev.WriteAt(b, off)
	_, err := p.ReadOptimistic(victim)
	var ce *buffer.CorruptPageError
	if !errors.As(err, &ce) || ce.PID != victim || ce.Offset != 8192+int64(victim)*buffer.PageSize {
		t.Fatalf("reading a damaged page: %v", err)
	}
	// The failure is not sticky for other pages.
	if _, err := p.ReadOptimistic(4); err != nil {
		t.Fatal(err)
	}
}

func TestLatches(t *testing.T) {
	p, _ := newPool(t, 64, nil)
	pid, _ := p.AllocPage()
	p.UnlockExclusive(pid, true)
	tok, _ := p.ReadOptimistic(pid)
	if err := p.LockShared(pid); err != nil {
		t.Fatal(err)
	}
	if !p.Validate(pid, tok) {
		t.Fatal("a shared latch invalidated an optimistic read")
	}
	if p.TryUpgrade(pid, tok) {
		t.Fatal("upgraded to exclusive while a shared latch is held")
	}
	p.UnlockShared(pid)
	if !p.TryUpgrade(pid, tok) {
		t.Fatal("upgrade of an unchanged page failed")
	}
	if p.Validate(pid, tok) {
		t.Fatal("optimistic read validated under an exclusive latch")
	}
	p.UnlockExclusive(pid, false)
	if p.Validate(pid, tok) {
		t.Fatal("optimistic read validated after an exclusive section")
	}
	// Counter under exclusive latches from many goroutines.
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				p.LockExclusive(pid)
				page := p.Page(pid)
				binary.LittleEndian.PutUint64(page[100:], binary.LittleEndian.Uint64(page[100:])+1)
				p.UnlockExclusive(pid, true)
			}
		}()
	}
	wg.Wait()
	if got := binary.LittleEndian.Uint64(p.Page(pid)[100:]); got != 8000 {
		t.Fatalf("counter %d, want 8000", got)
	}
}
