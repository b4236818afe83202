package btree

import (
	"bytes"
	"fmt"

	"github.com/cumulusdb/cumulus/db/buffer"
)

// RedoPut replays a logged leaf put on page (latched by the caller).
func RedoPut(pid buffer.PID, page, key, val []byte) error {
	n := node(page)
	if n.kind() != kindLeaf {
		return &CorruptError{PID: pid, Reason: fmt.Sprintf("redo of a put on a page of kind %d", n.kind())}
	}
	if err := n.leafPut(key, val); err != nil {
		return &CorruptError{PID: pid, Reason: "redo of a put does not fit"}
	}
	return nil
}

// RedoDelete replays a logged leaf delete on page (latched by the caller).
func RedoDelete(pid buffer.PID, page, key []byte) error {
	n := node(page)
	if n.kind() != kindLeaf {
		return &CorruptError{PID: pid, Reason: fmt.Sprintf("redo of a delete on a page of kind %d", n.kind())}
	}
	if !n.leafDelete(key) {
		return &CorruptError{PID: pid, Reason: "redo of a delete of a missing key"}
	}
	return nil
}

// Stats describes a tree's shape.
type Stats struct {
	Height, Leaves, Inner, Entries int
}

// Check verifies the tree's structure: key order inside nodes, separators
// bounding their subtrees, equal depth of leaves, and a leaf chain that
// visits the leaves in order. It latches pages shared, one at a time, and is
// meant for tests and offline verification of a quiescent tree.
func (t *Tree) Check() (Stats, error) {
	var st Stats
	var leaves []buffer.PID
	var walk func(pid buffer.PID, lo, hi []byte, depth int) error
	walk = func(pid buffer.PID, lo, hi []byte, depth int) error {
		if err := t.pool.LockShared(pid); err != nil {
			return err
		}
		var buf [buffer.PageSize]byte
		copy(buf[:], t.pool.Page(pid))
		t.pool.UnlockShared(pid)
		n := node(buf[:])
		for i := 0; i < n.count(); i++ {
			k := n.key(i)
			if i > 0 && bytes.Compare(n.key(i-1), k) >= 0 {
				return &CorruptError{PID: pid, Reason: fmt.Sprintf("keys %d and %d out of order", i-1, i)}
			}
			if (lo != nil && bytes.Compare(k, lo) <= 0) || (hi != nil && bytes.Compare(k, hi) > 0) {
				return &CorruptError{PID: pid, Reason: fmt.Sprintf("key %d outside its parent's bounds", i)}
			}
		}
		switch n.kind() {
		case kindLeaf:
			if st.Height == 0 {
				st.Height = depth
			} else if st.Height != depth {
				return &CorruptError{PID: pid, Reason: "leaves at different depths"}
			}
			st.Leaves++
			st.Entries += n.count()
			leaves = append(leaves, pid)
			return nil
		case kindInner:
			st.Inner++
			prev := lo
			for i := 0; i < n.count(); i++ {
				k := append([]byte(nil), n.key(i)...)
				if err := walk(n.child(i), prev, k, depth+1); err != nil {
					return err
				}
				prev = k
			}
			return walk(n.link(), prev, hi, depth+1)
		}
		return &CorruptError{PID: pid, Reason: fmt.Sprintf("unknown node kind %d", n.kind())}
	}
	if err := walk(t.root, nil, nil, 1); err != nil {
		return st, err
	}
	for i, pid := range leaves {
		if err := t.pool.LockShared(pid); err != nil {
			return st, err
		}
		link := node(t.pool.Page(pid)).link()
		t.pool.UnlockShared(pid)
		want := buffer.PID(0)
		if i+1 < len(leaves) {
			want = leaves[i+1]
		}
		if link != want {
			return st, &CorruptError{PID: pid, Reason: fmt.Sprintf("leaf link %d, expected %d", link, want)}
		}
	}
	return st, nil
}
