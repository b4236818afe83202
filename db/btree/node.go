package btree

import (
	"bytes"
	"encoding/binary"
	"errors"

	"github.com/cumulusdb/cumulus/db/buffer"
)

// Node layout, after the buffer manager's header:
//
//	24  kind    uint8   kindLeaf or kindInner
//	26  count   uint16  number of slots
//	28  heapTop uint16  lowest offset used by entry data (data grows down)
//	30  frag    uint16  bytes of entry data freed by deletes and updates
//	32  link    uint64  leaf: next leaf to the right (0: none);
//	                    inner: the rightmost child ("upper")
//	40  slots   count × {off uint16, klen uint16, vlen uint16}, sorted by key
//
// An inner node's slot i holds separator key k_i and child c_i: keys <= k_i
// (and > k_{i-1}) live under c_i; keys > k_{count-1} live under link.
//
// Every function here is deterministic in the page bytes, which recovery
// relies on: redoing a logged operation on a page in the state it had when
// the operation was logged produces the same bytes.
const (
	offKind    = buffer.HeaderSize
	offCount   = offKind + 2
	offHeapTop = offKind + 4
	offFrag    = offKind + 6
	offLink    = offKind + 8
	slotsStart = offKind + 16
	slotSize   = 6

	kindLeaf  = 1
	kindInner = 2
)

// Size limits. A node must hold at least four maximal entries so that a
// split always leaves both halves non-empty and a parent always has room
// after its own split.
const (
	// MaxKeySize is the largest key.
	MaxKeySize = 512
	// MaxEntrySize bounds len(key)+len(value) of one entry.
	MaxEntrySize = (buffer.PageSize-slotsStart)/4 - slotSize
)

var errNoSpace = errors.New("btree: node full")

type node []byte

func (n node) kind() byte       { return n[offKind] }
func (n node) count() int       { return int(binary.LittleEndian.Uint16(n[offCount:])) }
func (n node) heapTop() int     { return int(binary.LittleEndian.Uint16(n[offHeapTop:])) }
func (n node) frag() int        { return int(binary.LittleEndian.Uint16(n[offFrag:])) }
func (n node) link() buffer.PID { return buffer.PID(binary.LittleEndian.Uint64(n[offLink:])) }

func (n node) setCount(c int)       { binary.LittleEndian.PutUint16(n[offCount:], uint16(c)) }
func (n node) setHeapTop(c int)     { binary.LittleEndian.PutUint16(n[offHeapTop:], uint16(c)) }
func (n node) setFrag(c int)        { binary.LittleEndian.PutUint16(n[offFrag:], uint16(c)) }
func (n node) setLink(p buffer.PID) { binary.LittleEndian.PutUint64(n[offLink:], uint64(p)) }

func (n node) top() int { return n.heapTop() }

func (n node) init(kind byte) {
	clear(n[offKind:slotsStart])
	n[offKind] = kind
	n.setHeapTop(buffer.PageSize)
}

func (n node) slot(i int) (off, klen, vlen int) {
	s := n[slotsStart+i*slotSize:]
	return int(binary.LittleEndian.Uint16(s)), int(binary.LittleEndian.Uint16(s[2:])), int(binary.LittleEndian.Uint16(s[4:]))
}

func (n node) setSlot(i, off, klen, vlen int) {
	s := n[slotsStart+i*slotSize:]
	binary.LittleEndian.PutUint16(s, uint16(off))
	binary.LittleEndian.PutUint16(s[2:], uint16(klen))
	binary.LittleEndian.PutUint16(s[4:], uint16(vlen))
}

func (n node) key(i int) []byte {
	off, kl, _ := n.slot(i)
	return n[off : off+kl]
}

func (n node) val(i int) []byte {
	off, kl, vl := n.slot(i)
	return n[off+kl : off+kl+vl]
}

func (n node) child(i int) buffer.PID {
	return buffer.PID(binary.LittleEndian.Uint64(n.val(i)))
}

func (n node) setChild(i int, p buffer.PID) {
	binary.LittleEndian.PutUint64(n.val(i), uint64(p))
}

// lowerBound returns the first slot whose key is >= key and whether it is
// equal.
func (n node) lowerBound(key []byte) (int, bool) {
	lo, hi := 0, n.count()
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		c := bytes.Compare(n.key(mid), key)
		if c == 0 {
			return mid, true
		}
		if c < 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, false
}

// lookupInner returns the child that covers key.
func (n node) lookupInner(key []byte) buffer.PID {
	i, _ := n.lowerBound(key)
	if i >= n.count() {
		return n.link()
	}
	return n.child(i)
}

func (n node) freeContiguous() int { return n.top() - slotsStart - n.count()*slotSize }
func (n node) freeTotal() int      { return n.freeContiguous() + n.frag() }

func (n node) fits(klen, vlen int) bool { return n.freeTotal() >= slotSize+klen+vlen }

// leafFits reports whether leafPut(key, val) will succeed.
func (n node) leafFits(key, val []byte) bool {
	free := n.freeTotal()
	if i, found := n.lowerBound(key); found {
		_, kl, vl := n.slot(i)
		if vl == len(val) {
			return true
		}
		free += slotSize + kl + vl
	}
	return free >= slotSize+len(key)+len(val)
}

// compact rewrites the entry data without holes.
func (n node) compact() {
	var tmp [buffer.PageSize]byte
	top := buffer.PageSize
	c := n.count()
	for i := 0; i < c; i++ {
		off, kl, vl := n.slot(i)
		top -= kl + vl
		copy(tmp[top:], n[off:off+kl+vl])
		n.setSlot(i, top, kl, vl)
	}
	copy(n[top:], tmp[top:])
	n.setHeapTop(top)
	n.setFrag(0)
}

// insertAt inserts an entry at slot i; the caller checked fits.
func (n node) insertAt(i int, key, val []byte) {
	need := len(key) + len(val)
	if n.freeContiguous() < slotSize+need {
		n.compact()
	}
	c := n.count()
	s := slotsStart + i*slotSize
	copy(n[s+slotSize:slotsStart+(c+1)*slotSize], n[s:slotsStart+c*slotSize])
	top := n.top() - need
	copy(n[top:], key)
	copy(n[top+len(key):], val)
	n.setHeapTop(top)
	n.setSlot(i, top, len(key), len(val))
	n.setCount(c + 1)
}

func (n node) removeAt(i int) {
	_, kl, vl := n.slot(i)
	c := n.count()
	s := slotsStart + i*slotSize
	copy(n[s:], n[s+slotSize:slotsStart+c*slotSize])
	n.setCount(c - 1)
	n.setFrag(n.frag() + kl + vl)
}

// leafPut inserts or replaces key.
func (n node) leafPut(key, val []byte) error {
	i, found := n.lowerBound(key)
	if found {
		if _, _, vl := n.slot(i); vl == len(val) {
			copy(n.val(i), val)
			return nil
		}
		if !n.leafFits(key, val) {
			return errNoSpace
		}
		n.removeAt(i)
	} else if !n.fits(len(key), len(val)) {
		return errNoSpace
	}
	n.insertAt(i, key, val)
	return nil
}

// leafDelete removes key and reports whether it was present.
func (n node) leafDelete(key []byte) bool {
	i, found := n.lowerBound(key)
	if found {
		n.removeAt(i)
	}
	return found
}

// splitPoint picks the slot m so that slots [0,m] and (m,count) hold
// about the same number of bytes; 0 <= m < count-1.
func (n node) splitPoint() int {
	c := n.count()
	total := 0
	for i := 0; i < c; i++ {
		_, kl, vl := n.slot(i)
		total += kl + vl + slotSize
	}
	acc := 0
	for i := 0; i < c; i++ {
		_, kl, vl := n.slot(i)
		acc += kl + vl + slotSize
		if acc >= total/2 {
			return max(0, min(i, c-2))
		}
	}
	return c - 2
}

// copyRange appends slots [from,to) of src to n.
func (n node) copyRange(src node, from, to int) {
	for i := from; i < to; i++ {
		n.insertAt(n.count(), src.key(i), src.val(i))
	}
}

func pidBytes(p buffer.PID) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(p))
	return b[:]
}
