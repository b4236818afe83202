// Package btree implements B+trees with variable-length keys and values on
// the buffer manager's pages, synchronised by optimistic lock coupling
// (Leis et al., "The ART of practical synchronization"; vmcache's B-tree).
//
// Readers take no latches: they read a node between two checks of its
// version (buffer.Pool.ReadOptimistic / Validate) and restart from the root
// when a check fails. Writers descend the same way and upgrade only the
// nodes they change to exclusive latches (parent before child, so writers
// cannot deadlock). A node that is too full is split eagerly: the writer
// latches parent and node, splits, and restarts.
//
// Invariants:
//
//   - A tree's root page id never changes: a root split moves the root's
//     contents into two new children, so catalogs can keep root ids.
//   - Leaves are linked left to right through their link field; pages are
//     never freed (deletes leave nodes underfull, no merges), so a link read
//     under a valid version always names a live leaf.
//   - Every change to a page is logged while the page is latched
//     exclusively, and the page's LSN is set to the record's LSN, so per
//     page the log order is the modification order (what redo needs).
//     Splits log full images of every page they touch; leaf puts and deletes
//     log the key (and value) only.
//   - Optimistic readers may see torn pages. Everything they derive is
//     bounds-checked by Go, and a panic in an optimistic section is turned
//     into a restart; only after many consecutive panics is it re-raised as
//     a bug.
package btree

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"

	"github.com/cumulusdb/cumulus/db/buffer"
)

// Logger receives the redo records of tree modifications. Each method is
// called while the page is latched exclusively and returns the record's LSN.
type Logger interface {
	PageImage(pid buffer.PID, page []byte) (uint64, error)
	LeafPut(pid buffer.PID, key, val []byte) (uint64, error)
	LeafDelete(pid buffer.PID, key []byte) (uint64, error)
}

// ErrTooLarge is returned for keys or entries beyond the size limits.
var ErrTooLarge = errors.New("btree: key or value too large")

// CorruptError reports a page whose contents make no sense as a node.
type CorruptError struct {
	PID    buffer.PID
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("btree: corrupt node in page %d: %s", e.PID, e.Reason)
}

// errRestart is the internal signal to restart an optimistic operation.
var errRestart = errors.New("btree: restart")

const maxDepth = 32

// Tree is one B+tree.
type Tree struct {
	pool *buffer.Pool
	root buffer.PID
	log  Logger
}

// Create allocates an empty tree and returns it.
func Create(pool *buffer.Pool, log Logger) (*Tree, error) {
	pid, err := pool.AllocPage()
	if err != nil {
		return nil, fmt.Errorf("btree: create: %w", err)
	}
	n := node(pool.Page(pid))
	n.init(kindLeaf)
	t := &Tree{pool: pool, root: pid, log: log}
	if err := t.logImage(pid); err != nil {
		pool.UnlockExclusive(pid, true)
		return nil, err
	}
	pool.UnlockExclusive(pid, true)
	return t, nil
}

// Open returns the tree rooted at root.
func Open(pool *buffer.Pool, root buffer.PID, log Logger) *Tree {
	return &Tree{pool: pool, root: root, log: log}
}

// Root returns the tree's root page id.
func (t *Tree) Root() buffer.PID { return t.root }

// InitPage formats a page as an empty leaf (for bootstrap and tests).
func InitPage(page []byte) { node(page).init(kindLeaf) }

func (t *Tree) logImage(pid buffer.PID) error {
	if t.log == nil {
		return nil
	}
	page := t.pool.Page(pid)
	lsn, err := t.log.PageImage(pid, page)
	if err != nil {
		return err
	}
	buffer.SetPageLSN(page, lsn)
	return nil
}

// CheckEntry validates sizes before anything is changed.
func CheckEntry(key, val []byte) error {
	if len(key) > MaxKeySize || len(key)+len(val) > MaxEntrySize {
		return fmt.Errorf("btree: key of %d and value of %d bytes (limits: key %d, key+value %d): %w",
			len(key), len(val), MaxKeySize, MaxEntrySize, ErrTooLarge)
	}
	return nil
}

// guard runs one optimistic attempt and turns a panic caused by a torn read
// into a restart.
func guard(attempt int, err *error) {
	if r := recover(); r != nil {
		if attempt > 10000 {
			panic(r)
		}
		*err = errRestart
	}
}

func pause(attempt int) {
	if attempt > 4 {
		runtime.Gosched()
	}
}

// Get appends the value stored under key to dst.
func (t *Tree) Get(key, dst []byte) ([]byte, bool, error) {
	for attempt := 0; ; attempt++ {
		v, found, err := t.tryGet(key, dst, attempt)
		if err != errRestart {
			return v, found, err
		}
		pause(attempt)
	}
}

// descend finds the leaf for key optimistically and returns it with its
// token and the parent's.
func (t *Tree) descend(key []byte) (pid buffer.PID, tok uint64, parent buffer.PID, ptok uint64, err error) {
	pid = t.root
	if tok, err = t.pool.ReadOptimistic(pid); err != nil {
		return
	}
	for depth := 0; ; depth++ {
		n := node(t.pool.Page(pid))
		switch n.kind() {
		case kindLeaf:
			return
		case kindInner:
		default:
			return 0, 0, 0, 0, t.corrupt(pid, tok, fmt.Sprintf("unknown node kind %d", n.kind()))
		}
		if depth > maxDepth {
			return 0, 0, 0, 0, t.corrupt(pid, tok, "tree deeper than 32 levels")
		}
		child := n.lookupInner(key)
		if !t.pool.Validate(pid, tok) {
			return 0, 0, 0, 0, errRestart
		}
		ctok, err := t.pool.ReadOptimistic(child)
		if err != nil {
			return 0, 0, 0, 0, err
		}
		if !t.pool.Validate(pid, tok) {
			return 0, 0, 0, 0, errRestart
		}
		parent, ptok, pid, tok = pid, tok, child, ctok
	}
}

func (t *Tree) corrupt(pid buffer.PID, tok uint64, why string) error {
	if !t.pool.Validate(pid, tok) {
		return errRestart
	}
	return &CorruptError{PID: pid, Reason: why}
}

func (t *Tree) tryGet(key, dst []byte, attempt int) (v []byte, found bool, err error) {
	defer guard(attempt, &err)
	pid, tok, _, _, err := t.descend(key)
	if err != nil {
		return nil, false, err
	}
	n := node(t.pool.Page(pid))
	i, found := n.lowerBound(key)
	if found {
		v = append(dst[:0], n.val(i)...)
	}
	if !t.pool.Validate(pid, tok) {
		return nil, false, errRestart
	}
	return v, found, nil
}

// Put inserts or replaces key.
func (t *Tree) Put(key, val []byte) error {
	if err := CheckEntry(key, val); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err := t.tryPut(key, val, attempt)
		if err != errRestart {
			return err
		}
		pause(attempt)
	}
}

func (t *Tree) tryPut(key, val []byte, attempt int) (err error) {
	defer guard(attempt, &err)
	pid, tok, parent, ptok, err := t.descend(key)
	if err != nil {
		return err
	}
	n := node(t.pool.Page(pid))
	if !n.leafFits(key, val) {
		if !t.pool.Validate(pid, tok) {
			return errRestart
		}
		if err := t.split(pid, tok, parent, ptok, key); err != nil {
			return err
		}
		return errRestart
	}
	if !t.pool.TryUpgrade(pid, tok) {
		return errRestart
	}
	if t.log != nil {
		lsn, err := t.log.LeafPut(pid, key, val)
		if err != nil {
			t.pool.UnlockExclusive(pid, false)
			return err
		}
		buffer.SetPageLSN(n, lsn)
	}
	err = n.leafPut(key, val)
	t.pool.UnlockExclusive(pid, true)
	if err != nil {
		return fmt.Errorf("btree: put into page %d after fit check: %w", pid, err)
	}
	return nil
}

// Delete removes key and reports whether it was present.
func (t *Tree) Delete(key []byte) (bool, error) {
	for attempt := 0; ; attempt++ {
		found, err := t.tryDelete(key, attempt)
		if err != errRestart {
			return found, err
		}
		pause(attempt)
	}
}

func (t *Tree) tryDelete(key []byte, attempt int) (found bool, err error) {
	defer guard(attempt, &err)
	pid, tok, _, _, err := t.descend(key)
	if err != nil {
		return false, err
	}
	n := node(t.pool.Page(pid))
	if _, found = n.lowerBound(key); !found {
		if !t.pool.Validate(pid, tok) {
			return false, errRestart
		}
		return false, nil
	}
	if !t.pool.TryUpgrade(pid, tok) {
		return false, errRestart
	}
	if t.log != nil {
		lsn, err := t.log.LeafDelete(pid, key)
		if err != nil {
			t.pool.UnlockExclusive(pid, false)
			return false, err
		}
		buffer.SetPageLSN(n, lsn)
	}
	n.leafDelete(key)
	t.pool.UnlockExclusive(pid, true)
	return true, nil
}

// split splits node pid (seen at tok) whose parent is parent (seen at ptok;
// 0 for the root). It returns nil when the caller should simply restart.
func (t *Tree) split(pid buffer.PID, tok uint64, parent buffer.PID, ptok uint64, key []byte) error {
	if pid == t.root {
		if !t.pool.TryUpgrade(pid, tok) {
			return nil
		}
		err := t.splitRoot(pid)
		t.pool.UnlockExclusive(pid, err == nil)
		return err
	}
	if !t.pool.TryUpgrade(parent, ptok) {
		return nil
	}
	if !t.pool.TryUpgrade(pid, tok) {
		t.pool.UnlockExclusive(parent, false)
		return nil
	}
	n, p := node(t.pool.Page(pid)), node(t.pool.Page(parent))
	m := n.splitPoint()
	sepLen := len(n.key(m))
	if !p.fits(sepLen, 8) {
		// The parent must split first; that needs its own parent.
		t.pool.UnlockExclusive(pid, false)
		t.pool.UnlockExclusive(parent, false)
		return t.splitAncestor(parent, key)
	}
	right, err := t.pool.AllocPage()
	if err != nil {
		t.pool.UnlockExclusive(pid, false)
		t.pool.UnlockExclusive(parent, false)
		return fmt.Errorf("btree: split page %d: %w", pid, err)
	}
	sep := splitInto(n, node(t.pool.Page(right)), m)
	if n.kind() == kindLeaf {
		n.setLink(right)
	}
	// The parent slot that pointed to pid now points to right; pid is
	// inserted before it under the separator.
	i, _ := p.lowerBound(sep)
	if i >= p.count() {
		if p.link() != pid {
			err = &CorruptError{PID: parent, Reason: fmt.Sprintf("upper link %d, expected child %d", p.link(), pid)}
		} else {
			p.setLink(right)
		}
	} else if p.child(i) != pid {
		err = &CorruptError{PID: parent, Reason: fmt.Sprintf("slot %d points to %d, expected child %d", i, p.child(i), pid)}
	} else {
		p.setChild(i, right)
	}
	if err == nil {
		p.insertAt(i, sep, pidBytes(pid))
		err = t.logImages(pid, right, parent)
	}
	t.pool.UnlockExclusive(right, true)
	t.pool.UnlockExclusive(pid, true)
	t.pool.UnlockExclusive(parent, true)
	return err
}

func (t *Tree) logImages(pids ...buffer.PID) error {
	for _, p := range pids {
		if err := t.logImage(p); err != nil {
			return err
		}
	}
	return nil
}

// splitInto moves the upper part of n (after slot m) into the empty page r
// and returns the separator: the largest key left in n (leaves) or the key
// that moves up (inner nodes).
func splitInto(n, r node, m int) []byte {
	var tmp [buffer.PageSize]byte
	old := node(tmp[:])
	copy(old, n)
	c := old.count()
	kind := old.kind()
	r.init(kind)
	n.init(kind)
	var sep []byte
	if kind == kindLeaf {
		n.copyRange(old, 0, m+1)
		r.copyRange(old, m+1, c)
		r.setLink(old.link())
		sep = append([]byte(nil), old.key(m)...)
		// n.link is set by the caller (it is the new right page).
	} else {
		n.copyRange(old, 0, m)
		n.setLink(old.child(m))
		r.copyRange(old, m+1, c)
		r.setLink(old.link())
		sep = append([]byte(nil), old.key(m)...)
	}
	return sep
}

// splitRoot moves the root's contents into two new pages and makes the root
// an inner node over them, so the root's page id never changes.
func (t *Tree) splitRoot(root buffer.PID) error {
	rn := node(t.pool.Page(root))
	a, err := t.pool.AllocPage()
	if err != nil {
		return fmt.Errorf("btree: split root %d: %w", root, err)
	}
	b, err := t.pool.AllocPage()
	if err != nil {
		t.pool.UnlockExclusive(a, true)
		return fmt.Errorf("btree: split root %d: %w", root, err)
	}
	an, bn := node(t.pool.Page(a)), node(t.pool.Page(b))
	copy(an[buffer.HeaderSize:], rn[buffer.HeaderSize:])
	m := an.splitPoint()
	sep := splitInto(an, bn, m)
	if an.kind() == kindLeaf {
		an.setLink(b)
	}
	rn.init(kindInner)
	rn.insertAt(0, sep, pidBytes(a))
	rn.setLink(b)
	err = t.logImages(a, b, root)
	t.pool.UnlockExclusive(a, true)
	t.pool.UnlockExclusive(b, true)
	return err
}

// splitAncestor finds target on the path to key and splits it; if target
// is no longer on the path someone else restructured the tree and the
// caller just restarts.
func (t *Tree) splitAncestor(target buffer.PID, key []byte) error {
	for attempt := 0; ; attempt++ {
		err := t.trySplitAncestor(target, key, attempt)
		if err != errRestart {
			return err
		}
		pause(attempt)
	}
}

func (t *Tree) trySplitAncestor(target buffer.PID, key []byte, attempt int) (err error) {
	defer guard(attempt, &err)
	var parent buffer.PID
	var ptok uint64
	pid := t.root
	tok, err := t.pool.ReadOptimistic(pid)
	if err != nil {
		return err
	}
	for depth := 0; depth <= maxDepth; depth++ {
		n := node(t.pool.Page(pid))
		if n.kind() != kindInner {
			if !t.pool.Validate(pid, tok) {
				return errRestart
			}
			return nil // target is gone from the path
		}
		if pid == target {
			if n.count() < 3 {
				return t.corrupt(pid, tok, "inner node too full with fewer than 3 keys")
			}
			return t.split(pid, tok, parent, ptok, key)
		}
		child := n.lookupInner(key)
		if !t.pool.Validate(pid, tok) {
			return errRestart
		}
		ctok, err := t.pool.ReadOptimistic(child)
		if err != nil {
			return err
		}
		if !t.pool.Validate(pid, tok) {
			return errRestart
		}
		parent, ptok, pid, tok = pid, tok, child, ctok
	}
	return t.corrupt(pid, tok, "tree deeper than 32 levels")
}

// Scan calls fn for the entries with start <= key < end in key order (a nil
// end means no upper bound) until fn returns false. The slices passed to fn
// are valid only during the call. Each leaf is read at one consistent
// version; the scan as a whole is not a snapshot.
func (t *Tree) Scan(start, end []byte, fn func(key, val []byte) bool) error {
	var b batch
	resume := append([]byte(nil), start...)
	for attempt := 0; ; attempt++ {
		next, done, err := t.tryScan(&b, resume, end, fn, attempt)
		if err == nil && done {
			return nil
		}
		if err != nil && err != errRestart {
			return err
		}
		resume = next
		pause(attempt)
	}
}

// batch holds copies of one leaf's entries.
type batch struct {
	data []byte
	ents [][2]int // key end, value end offsets into data
}

func (b *batch) reset() { b.data, b.ents = b.data[:0], b.ents[:0] }
func (b *batch) add(k, v []byte) {
	b.data = append(b.data, k...)
	ke := len(b.data)
	b.data = append(b.data, v...)
	b.ents = append(b.ents, [2]int{ke, len(b.data)})
}

// tryScan returns the key to resume from after a restart.
func (t *Tree) tryScan(b *batch, resume, end []byte, fn func(k, v []byte) bool, attempt int) (next []byte, done bool, err error) {
	next = resume
	defer guard(attempt, &err)
	pid, tok, _, _, err := t.descend(resume)
	if err != nil {
		return next, false, err
	}
	for {
		b.reset()
		n := node(t.pool.Page(pid))
		if n.kind() != kindLeaf {
			return next, false, t.corrupt(pid, tok, "leaf chain reaches a non-leaf")
		}
		i, _ := n.lowerBound(next)
		c := n.count()
		last := false
		for ; i < c; i++ {
			k := n.key(i)
			if end != nil && bytes.Compare(k, end) >= 0 {
				last = true
				break
			}
			b.add(k, n.val(i))
		}
		link := n.link()
		if link == 0 {
			last = true
		}
		if !t.pool.Validate(pid, tok) {
			return next, false, errRestart
		}
		prev := 0
		for _, e := range b.ents {
			k, v := b.data[prev:e[0]], b.data[e[0]:e[1]]
			prev = e[1]
			if !fn(k, v) {
				return next, true, nil
			}
			next = append(append(next[:0], k...), 0) // successor of k; next is Scan's own buffer
		}
		if last {
			return next, true, nil
		}
		ltok, err := t.pool.ReadOptimistic(link)
		if err != nil {
			return next, false, err
		}
		if !t.pool.Validate(pid, tok) {
			return next, false, errRestart
		}
		pid, tok = link, ltok
	}
}
