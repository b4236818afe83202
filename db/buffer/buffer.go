// Package buffer is CumulusDB's buffer manager, in the style of vmcache
// (Leis et al., SIGMOD'23). The database is one large range of virtual
// pages reserved through kapi; the address of page p is base + p*PageSize.
// Residency and latching live in a 64-bit state word per page, so a page
// access checks one word instead of probing a hash table, and the kernel's
// page tables (Linux: the process's; the unikernel: its own) translate.
//
// State word layout (one per page, in a separate kapi range so that it is
// backed lazily like the pages themselves):
//
//	bits 63..56  state: 0 Evicted, 1 Unlocked, 2 Marked (clock), 3..254
//	             shared with count state-2, 255 Locked (exclusive)
//	bit  55      dirty: the page differs from its image on the device
//	bits 54..0   version: incremented by every exclusive unlock and eviction
//
// A zeroed state word means "evicted, version 0", so a fresh range needs no
// initialisation.
//
// Invariants:
//
//   - A page's bytes change only while its state is Locked.
//   - The version changes whenever the page's bytes may have changed, so an
//     optimistic reader that saw version v in a non-Locked, non-Evicted state
//     before and after reading saw a consistent page.
//   - The dirty bit is set only under Locked and cleared only while the
//     clearer holds a shared latch and has written the page, so a clear can
//     never lose a modification (writers cannot lock while it is shared).
//   - A dirty page is written only after Gate.Sync covered its page LSN and
//     the log group that LSN belongs to is complete (the WAL rule, plus no
//     page image ever holds part of a transaction whose commit record is not
//     durable).
//   - Memory of an evicted page reads as zeros but stays mapped: a racing
//     optimistic reader never faults, it only fails validation.
//   - Page ids are never reused; the device holds page p at
//     DataOffset + p*PageSize.
package buffer

import (
	"errors"
	"fmt"
	"hash/crc32"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"encoding/binary"

	"github.com/cumulusdb/cumulus/kapi"
)

// PageSize is the size of a page in memory and on the device.
const PageSize = 4096

// Page header fields shared by every page kind. Higher layers start their
// own headers at HeaderSize.
const (
	offLSN      = 0  // uint64: LSN of the last log record applied to the page
	offChecksum = 8  // uint32: CRC-32C of the page with this field as zero
	offPID      = 16 // uint64: the page's own id, to catch misdirected writes
	// HeaderSize is the size of the buffer manager's page header.
	HeaderSize = 24
)

// PID is a page id.
type PID uint64

const (
	stEvicted  = 0
	stUnlocked = 1
	stMarked   = 2
	stShared0  = 2 // shared count n is stored as stShared0+n
	stMaxShare = 254
	stLocked   = 255

	dirtyBit = uint64(1) << 55
	verMask  = dirtyBit - 1
)

func state(w uint64) uint64   { return w >> 56 }
func version(w uint64) uint64 { return w & verMask }
func with(w, st uint64) uint64 {
	return st<<56 | w&(dirtyBit|verMask)
}
func bumped(w, st uint64) uint64 {
	return st<<56 | w&dirtyBit | (w+1)&verMask
}

// Gate connects the buffer manager to the write-ahead log.
type Gate interface {
	// Complete reports whether the log record at lsn belongs to a log group
	// whose last record has been appended.
	Complete(lsn uint64) bool
	// Sync makes the log durable through the end of the group holding lsn.
	Sync(lsn uint64) error
}

// Config configures a Pool.
type Config struct {
	Memory kapi.Memory
	Device kapi.BlockDevice
	// DataOffset is where page 0 lives on the device.
	DataOffset int64
	// MaxPages is the size of the virtual range in pages: the largest
	// database the pool can address.
	MaxPages uint64
	// PoolPages is the number of pages that may be resident at once.
	PoolPages uint64
	// Gate enforces the WAL rule; nil means pages may always be written.
	Gate Gate
	// GrowChunk is the minimum number of pages the device grows by.
	GrowChunk uint64
}

// Stats are counters of a pool.
type Stats struct {
	Resident  int64  // pages resident now
	Faults    uint64 // pages read from the device
	Evictions uint64 // pages evicted
	Writes    uint64 // pages written to the device
}

// Pool is a vmcache-style buffer pool over one device.
type Pool struct {
	mem      kapi.Memory
	pages    kapi.Region
	stateMem kapi.Region
	states   []atomic.Uint64
	dev      kapi.BlockDevice
	dataOff  int64
	maxPages uint64
	poolSize int64
	gate     Gate
	chunk    uint64

	nextPID   atomic.Uint64
	resident  atomic.Int64
	faults    atomic.Uint64
	evictions atomic.Uint64
	writes    atomic.Uint64
	// AllowZeroPages makes a never-written (all-zero) page load as an empty
	// page instead of failing its checksum; recovery sets it while it redoes
	// page images onto pages that were allocated but never written.
	allowZero atomic.Bool

	evictMu sync.Mutex // one evictor at a time; guards hand
	hand    uint64
	growMu  sync.Mutex
}

// ErrPoolExhausted means no page could be evicted: every resident page is
// latched or belongs to an unfinished log group.
var ErrPoolExhausted = errors.New("buffer: pool exhausted")

// CorruptPageError reports a page whose device image failed verification.
type CorruptPageError struct {
	PID    PID
	Offset int64 // device offset of the page
	Reason string
}

func (e *CorruptPageError) Error() string {
	return fmt.Sprintf("buffer: corrupt page %d at device offset %d: %s", e.PID, e.Offset, e.Reason)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// New reserves the virtual ranges and returns an empty pool. The caller sets
// the number of allocated pages with SetNextPID.
func New(cfg Config) (*Pool, error) {
	if cfg.MaxPages == 0 || cfg.PoolPages < 16 {
		return nil, fmt.Errorf("buffer: need MaxPages > 0 and PoolPages >= 16 (got %d, %d)", cfg.MaxPages, cfg.PoolPages)
	}
	ps := uintptr(cfg.Memory.PageSize())
	if PageSize%ps != 0 {
		return nil, fmt.Errorf("buffer: kernel page size %d does not divide %d", ps, PageSize)
	}
	p := &Pool{mem: cfg.Memory, dev: cfg.Device, dataOff: cfg.DataOffset, maxPages: cfg.MaxPages,
		poolSize: int64(cfg.PoolPages), gate: cfg.Gate, chunk: max(cfg.GrowChunk, 256), hand: 1}
	var err error
	size := uintptr(cfg.MaxPages) * PageSize
	if p.pages, err = cfg.Memory.Reserve(size, 2<<20); err != nil {
		return nil, fmt.Errorf("buffer: reserve pages: %w", err)
	}
	if err = cfg.Memory.Allocate(p.pages, 0, size); err != nil {
		cfg.Memory.Free(p.pages)
		return nil, fmt.Errorf("buffer: allocate pages: %w", err)
	}
	ssize := (uintptr(cfg.MaxPages)*8 + ps - 1) &^ (ps - 1)
	if p.stateMem, err = cfg.Memory.Reserve(ssize, ps); err != nil {
		cfg.Memory.Free(p.pages)
		return nil, fmt.Errorf("buffer: reserve states: %w", err)
	}
	if err = cfg.Memory.Allocate(p.stateMem, 0, ssize); err != nil {
		cfg.Memory.Free(p.pages)
		cfg.Memory.Free(p.stateMem)
		return nil, fmt.Errorf("buffer: allocate states: %w", err)
	}
	p.states = unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&p.stateMem.Mem[0])), cfg.MaxPages)
	return p, nil
}

// Close releases the pool's memory. Dirty pages are lost; call FlushAll
// first.
func (p *Pool) Close() error {
	p.states = nil
	err1 := p.mem.Free(p.pages)
	err2 := p.mem.Free(p.stateMem)
	return errors.Join(err1, err2)
}

// SetGate installs the log gate (the log is opened after the pool).
func (p *Pool) SetGate(g Gate) { p.gate = g }

// SetAllowZeroPages is used by recovery; see Pool.allowZero.
func (p *Pool) SetAllowZeroPages(on bool) { p.allowZero.Store(on) }

// SetNextPID sets the first unallocated page id.
func (p *Pool) SetNextPID(n PID) { p.nextPID.Store(uint64(n)) }

// NextPID returns the first unallocated page id.
func (p *Pool) NextPID() PID { return PID(p.nextPID.Load()) }

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	return Stats{Resident: p.resident.Load(), Faults: p.faults.Load(),
		Evictions: p.evictions.Load(), Writes: p.writes.Load()}
}

// Page returns the memory of page pid. Its contents are only meaningful
// under a latch or between a successful ReadOptimistic and Validate.
func (p *Pool) Page(pid PID) []byte {
	off := uint64(pid) * PageSize
	return p.pages.Mem[off : off+PageSize : off+PageSize]
}

// PageLSN returns the LSN stored in a page.
func PageLSN(page []byte) uint64 { return binary.LittleEndian.Uint64(page[offLSN:]) }

// SetPageLSN stores the LSN of the last log record applied to a page.
func SetPageLSN(page []byte, lsn uint64) { binary.LittleEndian.PutUint64(page[offLSN:], lsn) }

func (p *Pool) check(pid PID) error {
	if uint64(pid) == 0 || uint64(pid) >= p.nextPID.Load() {
		return fmt.Errorf("buffer: page %d out of range (next %d)", pid, p.nextPID.Load())
	}
	return nil
}

// ReadOptimistic returns a version token for pid, faulting the page in if
// needed. The reader must call Validate after reading and discard what it
// read if that fails.
func (p *Pool) ReadOptimistic(pid PID) (uint64, error) {
	if err := p.check(pid); err != nil {
		return 0, err
	}
	s := &p.states[pid]
	for spin := 0; ; spin++ {
		w := s.Load()
		switch state(w) {
		case stUnlocked:
			return w, nil
		case stMarked:
			// Second chance: an access clears the clock mark.
			s.CompareAndSwap(w, with(w, stUnlocked))
			return w, nil
		case stEvicted:
			if err := p.fault(pid, w); err != nil {
				return 0, err
			}
		case stLocked:
			backoff(spin)
		default:
			return w, nil // shared latches do not stop optimistic readers
		}
	}
}

// Validate reports whether page pid is unchanged since ReadOptimistic
// returned tok.
func (p *Pool) Validate(pid PID, tok uint64) bool {
	w := p.states[pid].Load()
	st := state(w)
	return version(w) == version(tok) && st != stLocked && st != stEvicted
}

// TryUpgrade turns an optimistic read into an exclusive latch if the page
// is unchanged since tok.
func (p *Pool) TryUpgrade(pid PID, tok uint64) bool {
	s := &p.states[pid]
	for {
		w := s.Load()
		st := state(w)
		if version(w) != version(tok) || (st != stUnlocked && st != stMarked) {
			return false
		}
		if s.CompareAndSwap(w, with(w, stLocked)) {
			return true
		}
	}
}

// LockExclusive latches pid exclusively, faulting it in if needed.
func (p *Pool) LockExclusive(pid PID) error {
	if err := p.check(pid); err != nil {
		return err
	}
	s := &p.states[pid]
	for spin := 0; ; spin++ {
		w := s.Load()
		switch state(w) {
		case stUnlocked, stMarked:
			if s.CompareAndSwap(w, with(w, stLocked)) {
				return nil
			}
		case stEvicted:
			if err := p.fault(pid, w); err != nil {
				return err
			}
		default:
			backoff(spin)
		}
	}
}

// UnlockExclusive releases an exclusive latch. dirty records that the page
// was modified.
func (p *Pool) UnlockExclusive(pid PID, dirty bool) {
	s := &p.states[pid]
	w := s.Load()
	n := bumped(w, stUnlocked)
	if dirty {
		n |= dirtyBit
	}
	s.Store(n)
}

// LockShared latches pid in shared mode, faulting it in if needed.
func (p *Pool) LockShared(pid PID) error {
	if err := p.check(pid); err != nil {
		return err
	}
	for spin := 0; ; spin++ {
		ok, evicted := p.tryLockShared(pid)
		if ok {
			return nil
		}
		if evicted {
			if err := p.fault(pid, p.states[pid].Load()); err != nil {
				return err
			}
			continue
		}
		backoff(spin)
	}
}

func (p *Pool) tryLockShared(pid PID) (ok, evicted bool) {
	s := &p.states[pid]
	w := s.Load()
	st := state(w)
	switch {
	case st == stUnlocked || st == stMarked:
		return s.CompareAndSwap(w, with(w, stShared0+1)), false
	case st == stEvicted:
		return false, true
	case st > stShared0 && st < stMaxShare:
		return s.CompareAndSwap(w, with(w, st+1)), false
	}
	return false, false
}

// UnlockShared releases a shared latch.
func (p *Pool) UnlockShared(pid PID) {
	s := &p.states[pid]
	for {
		w := s.Load()
		st := state(w)
		n := st - 1
		if st == stShared0+1 {
			n = stUnlocked
		}
		if s.CompareAndSwap(w, with(w, n)) {
			return
		}
	}
}

func backoff(spin int) {
	if spin > 16 {
		runtime.Gosched()
	}
}

func (p *Pool) devOffset(pid PID) int64 { return p.dataOff + int64(pid)*PageSize }

// fault loads an evicted page. w is the state the caller saw.
func (p *Pool) fault(pid PID, w uint64) error {
	s := &p.states[pid]
	if state(w) != stEvicted || !s.CompareAndSwap(w, with(w, stLocked)) {
		return nil // someone else is loading it; the caller retries
	}
	if err := p.reserveFrame(); err != nil {
		s.Store(w)
		return err
	}
	page := p.Page(pid)
	off := p.devOffset(pid)
	err := p.readPage(pid, page, off)
	if err != nil {
		p.mem.Discard(p.pages, uintptr(pid)*PageSize, PageSize)
		p.resident.Add(-1)
		s.Store(w)
		return err
	}
	p.faults.Add(1)
	s.Store(bumped(w, stUnlocked) &^ dirtyBit)
	return nil
}

func (p *Pool) readPage(pid PID, page []byte, off int64) error {
	if off+PageSize > p.dev.Size() {
		return &CorruptPageError{PID: pid, Offset: off, Reason: "page lies beyond the end of the device"}
	}
	if _, err := p.dev.ReadAt(page, off); err != nil {
		return fmt.Errorf("buffer: read page %d: %w", pid, err)
	}
	stored := binary.LittleEndian.Uint32(page[offChecksum:])
	if stored == 0 && allZero(page) {
		if p.allowZero.Load() {
			return nil
		}
		return &CorruptPageError{PID: pid, Offset: off, Reason: "page was never written (all zero)"}
	}
	if sum := Checksum(page); sum != stored {
		return &CorruptPageError{PID: pid, Offset: off,
			Reason: fmt.Sprintf("checksum mismatch (stored %#08x, computed %#08x)", stored, sum)}
	}
	if got := PID(binary.LittleEndian.Uint64(page[offPID:])); got != pid {
		return &CorruptPageError{PID: pid, Offset: off, Reason: fmt.Sprintf("page holds id %d (misdirected write)", got)}
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

// Checksum computes a page's CRC-32C, skipping the checksum field. It is
// never zero, so a zero field means "never written".
func Checksum(page []byte) uint32 {
	c := crc32.Update(0, castagnoli, page[:offChecksum])
	c = crc32.Update(c, castagnoli, page[offChecksum+4:])
	if c == 0 {
		c = 1
	}
	return c
}

// reserveFrame accounts for one more resident page, evicting if the pool is
// full.
func (p *Pool) reserveFrame() error {
	for tries := 0; p.resident.Add(1) > p.poolSize; tries++ {
		p.resident.Add(-1)
		n, err := p.evict()
		if err != nil {
			return err
		}
		if n == 0 {
			if tries > 100 {
				return ErrPoolExhausted
			}
			runtime.Gosched()
		}
	}
	return nil
}

// AllocPage allocates a new page and returns it latched exclusively and
// zeroed except for its header's id. The caller unlocks it dirty.
func (p *Pool) AllocPage() (PID, error) {
	pid := PID(p.nextPID.Add(1) - 1)
	if uint64(pid) >= p.maxPages {
		p.nextPID.Add(^uint64(0))
		return 0, fmt.Errorf("buffer: database full: page %d exceeds the virtual range of %d pages", pid, p.maxPages)
	}
	if err := p.EnsureSpace(0); err != nil {
		return 0, err
	}
	if err := p.reserveFrame(); err != nil {
		return 0, err
	}
	s := &p.states[pid]
	w := s.Load()
	if state(w) != stEvicted || !s.CompareAndSwap(w, with(w, stLocked)) {
		return 0, fmt.Errorf("buffer: new page %d already in use (state %#x)", pid, w)
	}
	page := p.Page(pid)
	clear(page)
	binary.LittleEndian.PutUint64(page[offPID:], uint64(pid))
	return pid, nil
}

// InstallPage makes page pid (which may be at or beyond NextPID) resident
// and exclusively latched, loading its device image if it has one. Recovery
// uses it to redo page images.
func (p *Pool) InstallPage(pid PID) error {
	for {
		cur := p.nextPID.Load()
		if uint64(pid) < cur || p.nextPID.CompareAndSwap(cur, uint64(pid)+1) {
			break
		}
	}
	if err := p.EnsureSpace(0); err != nil {
		return err
	}
	return p.LockExclusive(pid)
}

// EnsureSpace grows the device so that extra pages beyond NextPID fit.
// This is where a full disk shows up, before anything is modified.
func (p *Pool) EnsureSpace(extra uint64) error {
	need := p.devOffset(PID(p.nextPID.Load() + extra))
	if need <= p.dev.Size() {
		return nil
	}
	p.growMu.Lock()
	defer p.growMu.Unlock()
	size := p.dev.Size()
	if need <= size {
		return nil
	}
	target := max(need, size+int64(p.chunk)*PageSize, size+size/8)
	if err := p.dev.Grow(target); err != nil {
		// Retry with exactly what is needed before giving up.
		if err2 := p.dev.Grow(need); err2 != nil {
			return fmt.Errorf("buffer: grow device for %d more pages: %w", extra, err2)
		}
	}
	return nil
}

type run struct {
	first PID
	n     int
}

// writePages writes the given (latched) pages, coalescing neighbours.
func (p *Pool) writePages(pids []PID) error {
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	for i := 0; i < len(pids); {
		j := i + 1
		for j < len(pids) && pids[j] == pids[j-1]+1 {
			j++
		}
		for _, pid := range pids[i:j] {
			page := p.Page(pid)
			binary.LittleEndian.PutUint32(page[offChecksum:], Checksum(page))
		}
		first := uint64(pids[i]) * PageSize
		buf := p.pages.Mem[first : first+uint64(j-i)*PageSize]
		if _, err := p.dev.WriteAt(buf, p.devOffset(pids[i])); err != nil {
			return fmt.Errorf("buffer: write pages %d..%d: %w", pids[i], pids[j-1], err)
		}
		p.writes.Add(uint64(j - i))
		i = j
	}
	return nil
}

// syncLog enforces the WAL rule for the given shared-latched pages.
func (p *Pool) syncLog(pids []PID) error {
	if p.gate == nil {
		return nil
	}
	var maxLSN uint64
	for _, pid := range pids {
		maxLSN = max(maxLSN, PageLSN(p.Page(pid)))
	}
	if maxLSN == 0 {
		return nil
	}
	return p.gate.Sync(maxLSN)
}

func (p *Pool) flushable(pid PID) bool {
	return p.gate == nil || p.gate.Complete(PageLSN(p.Page(pid)))
}

// evict runs the clock until it has evicted a batch of pages and returns
// how many it evicted.
func (p *Pool) evict() (int, error) {
	p.evictMu.Lock()
	defer p.evictMu.Unlock()
	if p.resident.Load() < p.poolSize {
		return 1, nil // another evictor made room while we waited
	}
	batch := int(min(64, p.poolSize/8+1))
	var clean, dirty []PID
	next := p.nextPID.Load()
	for scanned := uint64(0); len(clean)+len(dirty) < batch && scanned < 3*next; scanned++ {
		pid := PID(p.hand)
		if p.hand++; p.hand >= next {
			p.hand = 1
		}
		if pid == 0 {
			continue
		}
		s := &p.states[pid]
		w := s.Load()
		switch state(w) {
		case stUnlocked:
			s.CompareAndSwap(w, with(w, stMarked))
		case stMarked:
			if w&dirtyBit == 0 {
				if s.CompareAndSwap(w, with(w, stLocked)) {
					clean = append(clean, pid)
				}
			} else if s.CompareAndSwap(w, with(w, stShared0+1)) {
				if p.flushable(pid) {
					dirty = append(dirty, pid)
				} else {
					p.UnlockShared(pid)
				}
			}
		}
	}
	if len(dirty) > 0 {
		err := p.syncLog(dirty)
		if err == nil {
			err = p.writePages(dirty)
		}
		if err != nil {
			for _, pid := range dirty {
				p.UnlockShared(pid)
			}
			for _, pid := range clean {
				p.states[pid].Store(with(p.states[pid].Load(), stUnlocked))
			}
			return 0, err
		}
		for _, pid := range dirty {
			s := &p.states[pid]
			for {
				w := s.Load()
				if state(w) == stShared0+1 {
					// Sole holder: upgrade and evict with the clean ones.
					if s.CompareAndSwap(w, with(w, stLocked)&^dirtyBit) {
						clean = append(clean, pid)
						break
					}
					continue
				}
				if s.CompareAndSwap(w, w&^dirtyBit) {
					p.UnlockShared(pid)
					break
				}
			}
		}
	}
	sort.Slice(clean, func(i, j int) bool { return clean[i] < clean[j] })
	for i := 0; i < len(clean); {
		j := i + 1
		for j < len(clean) && clean[j] == clean[j-1]+1 {
			j++
		}
		if err := p.mem.Discard(p.pages, uintptr(clean[i])*PageSize, uintptr(j-i)*PageSize); err != nil {
			for _, pid := range clean[i:] {
				p.states[pid].Store(with(p.states[pid].Load(), stUnlocked))
			}
			return i, fmt.Errorf("buffer: evict: %w", err)
		}
		for _, pid := range clean[i:j] {
			s := &p.states[pid]
			s.Store(bumped(s.Load(), stEvicted) &^ dirtyBit)
		}
		i = j
	}
	p.resident.Add(-int64(len(clean)))
	p.evictions.Add(uint64(len(clean)))
	return len(clean), nil
}

// FlushAll writes every page that is dirty when the scan reaches it and
// then flushes the device. Every modification made before FlushAll was
// called is durable on the page area when it returns, which is what a
// checkpoint needs. Writers are not stopped; pages they latch are retried.
func (p *Pool) FlushAll() error {
	next := PID(p.nextPID.Load())
	var pending []PID
	for pid := PID(1); pid < next; pid++ {
		if p.states[pid].Load()&dirtyBit != 0 {
			pending = append(pending, pid)
		}
	}
	for spin := 0; len(pending) > 0; spin++ {
		var retry []PID
		for i := 0; i < len(pending); i += 128 {
			chunk := pending[i:min(i+128, len(pending))]
			var held []PID
			for _, pid := range chunk {
				// Never block on a latch while holding others: a writer
				// holding this page may be waiting for one we hold.
				ok, evicted := p.tryLockShared(pid)
				switch {
				case evicted:
					// Evicted pages were written before they were dropped.
				case !ok:
					retry = append(retry, pid)
				case p.states[pid].Load()&dirtyBit == 0:
					p.UnlockShared(pid)
				case !p.flushable(pid):
					p.UnlockShared(pid)
					retry = append(retry, pid)
				default:
					held = append(held, pid)
				}
			}
			if len(held) == 0 {
				continue
			}
			err := p.syncLog(held)
			if err == nil {
				err = p.writePages(held)
			}
			for _, pid := range held {
				if err == nil {
					s := &p.states[pid]
					for w := s.Load(); !s.CompareAndSwap(w, w&^dirtyBit); w = s.Load() {
					}
				}
				p.UnlockShared(pid)
			}
			if err != nil {
				return err
			}
		}
		pending = retry
		if len(retry) > 0 {
			backoff(spin + 17)
		}
	}
	if err := p.dev.Flush(); err != nil {
		return fmt.Errorf("buffer: flush: %w", err)
	}
	return nil
}

// StampPID records a page's own id in its header (redo of page images).
func StampPID(page []byte, pid PID) { binary.LittleEndian.PutUint64(page[offPID:], uint64(pid)) }

// SetChecksum stores a page's checksum (for pages written outside the pool).
func SetChecksum(page []byte) {
	binary.LittleEndian.PutUint32(page[offChecksum:], Checksum(page))
}

// Capacity returns the number of pages that may be resident at once.
func (p *Pool) Capacity() uint64 { return uint64(p.poolSize) }
