package exec

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
	"github.com/cumulusdb/cumulus/db/storage"
)

// plan is an executable operator tree node (push-based, row at a time).
type plan interface {
	cols() []col
	run(rc *runCtx, emit func(Row) error) error
}

// access kinds of a table scan.
const (
	accFull = iota
	accPoint
	accRange // PK prefix equality and/or a range on the next column
	accIndex // secondary index prefix equality
	accMulti // several primary-key prefixes (IN lists): points or ranges
)

// maxMultiKeys bounds the keys an IN-list access path enumerates (the
// product of the lists); beyond it a range or full scan is used.
const maxMultiKeys = 1024

type bound struct {
	e         *expr
	inclusive bool
}

// scanNode reads a base table.
type scanNode struct {
	t      *catalog.Table
	cs     []col
	acc    int
	eq     []*expr // values for the leading key columns (PK or index)
	lo, hi *bound  // range on the key column after eq (accRange)
	index  *catalog.Index
	filter *expr
	lock   bool // FOR UPDATE: lock rows and re-read them
	keyCol []int
	alts   [][]*expr // accMulti: the key prefixes, each like eq
}

func (n *scanNode) cols() []col { return n.cs }

func (n *scanNode) run(rc *runCtx, emit func(Row) error) error {
	return n.each(rc, func(_ []byte, row Row) error { return emit(row) })
}

// tableKey encodes the primary key of row (or a new row id).
func tableKey(b []byte, t *catalog.Table, row Row) []byte {
	for _, i := range t.PK {
		b = datum.AppendKey(b, row[i])
	}
	return b
}

func indexKey(b []byte, ix *catalog.Index, row Row) []byte {
	for _, i := range ix.Cols {
		b = datum.AppendKey(b, row[i])
	}
	return b
}

func (rc *runCtx) engineTable(name string) (*storage.Table, error) {
	st, err := rc.s.tx.Table(name)
	if err != nil {
		return nil, fmt.Errorf("exec: table storage %q: %w", name, err)
	}
	return st, nil
}

// keyValues evaluates eq expressions and casts them to the key columns'
// types; ok is false when one is NULL (nothing can match).
func (n *scanNode) keyPrefix(rc *runCtx, cols []int) ([]byte, bool, error) {
	return n.keyOf(rc, n.eq, cols)
}

func (n *scanNode) keyOf(rc *runCtx, eq []*expr, cols []int) ([]byte, bool, error) {
	var b []byte
	for i, e := range eq {
		v, err := e.fn(rc, nil)
		if err != nil {
			return nil, false, err
		}
		if v.IsNull() {
			return nil, false, nil
		}
		cv, err := datum.Cast(v, n.t.Columns[cols[i]].Type)
		if err != nil {
			// A value that does not fit the column's type matches nothing
			// (the filter decides if it is an error).
			if sqlerr.Code(err) == sqlerr.NumericOutOfRange || sqlerr.Code(err) == sqlerr.StringTruncation {
				return nil, false, nil
			}
			return nil, false, err
		}
		b = datum.AppendKey(b, cv)
	}
	return b, true, nil
}

// each calls fn for every row (and its key) that passes the filter.
func (n *scanNode) each(rc *runCtx, fn func(key []byte, row Row) error) error {
	st, err := rc.engineTable(n.t.DataName())
	if err != nil {
		return err
	}
	tx := rc.s.tx
	ncols := len(n.t.Columns)
	visit := func(key, val []byte, lockIt bool) error {
		if lockIt {
			if err := rc.s.lockRow(n.t.DataName(), key); err != nil {
				return err
			}
			v, ok, err := tx.Get(st, key)
			if err != nil {
				return err
			}
			if !ok {
				return nil
			}
			val = v
		}
		row, err := datum.DecodeRow(val, nil, ncols)
		if err != nil {
			return fmt.Errorf("exec: table %s: %w", n.t.Name, err)
		}
		if n.filter != nil {
			ok, err := n.filter.fn(rc, row)
			if err != nil {
				return err
			}
			if !ok.True() {
				return nil
			}
		}
		return fn(key, row)
	}
	switch n.acc {
	case accPoint:
		key, ok, err := n.keyPrefix(rc, n.keyCol)
		if err != nil || !ok {
			return err
		}
		if n.lock {
			if err := rc.s.lockRow(n.t.DataName(), key); err != nil {
				return err
			}
		}
		v, found, err := tx.Get(st, key)
		if err != nil || !found {
			return err
		}
		return visit(key, v, false)
	case accIndex:
		prefix, ok, err := n.keyPrefix(rc, n.index.Cols)
		if err != nil || !ok {
			return err
		}
		xt, err := rc.engineTable(n.t.IndexName(n.index))
		if err != nil {
			return err
		}
		var pks [][]byte
		if err := tx.Scan(xt, prefix, datum.PrefixEnd(prefix), func(_, v []byte) bool {
			pks = append(pks, append([]byte(nil), v...))
			return true
		}); err != nil {
			return err
		}
		for _, pk := range pks {
			v, found, err := tx.Get(st, pk)
			if err != nil {
				return err
			}
			if !found {
				continue
			}
			if err := visit(pk, v, n.lock); err != nil {
				return err
			}
		}
		return nil
	}
	if n.acc == accMulti {
		return n.eachMulti(rc, st, visit)
	}
	var start, end []byte
	if n.acc == accRange {
		prefix, ok, err := n.keyPrefix(rc, n.keyCol)
		if err != nil || !ok {
			return err
		}
		start, end = prefix, datum.PrefixEnd(prefix)
		next := n.keyCol[len(n.eq)]
		typ := n.t.Columns[next].Type
		if n.lo != nil {
			v, err := n.lo.e.fn(rc, nil)
			if err != nil {
				return err
			}
			if v.IsNull() {
				return nil
			}
			if cv, err := datum.Cast(v, typ); err == nil && cv.K == v.K {
				start = datum.AppendKey(append([]byte(nil), prefix...), cv)
				if !n.lo.inclusive {
					start = datum.PrefixEnd(start)
				}
			}
		}
		if n.hi != nil {
			v, err := n.hi.e.fn(rc, nil)
			if err != nil {
				return err
			}
			if v.IsNull() {
				return nil
			}
			if cv, err := datum.Cast(v, typ); err == nil && cv.K == v.K {
				end = datum.AppendKey(append([]byte(nil), prefix...), cv)
				if n.hi.inclusive {
					end = datum.PrefixEnd(end)
				}
			}
		}
		if start == nil {
			start = []byte{}
		}
		if end != nil && bytes.Compare(start, end) >= 0 {
			return nil
		}
	}
	return n.scanRange(rc, st, start, end, visit)
}

// eachMulti visits the rows under each distinct key prefix of an IN-list
// access path, in key order: rows locked FOR UPDATE are then always taken
// in the same order, so two transactions locking overlapping lists (TPC-C's
// NewOrder on stock) cannot deadlock on each other.
func (n *scanNode) eachMulti(rc *runCtx, st *storage.Table, visit func(key, val []byte, lockIt bool) error) error {
	keys := make([]string, 0, len(n.alts))
	seen := make(map[string]bool, len(n.alts))
	for _, alt := range n.alts {
		k, ok, err := n.keyOf(rc, alt, n.keyCol)
		if err != nil {
			return err
		}
		if ok && !seen[string(k)] {
			seen[string(k)] = true
			keys = append(keys, string(k))
		}
	}
	sort.Strings(keys)
	point := len(n.alts[0]) == len(n.keyCol)
	for _, k := range keys {
		key := []byte(k)
		if !point {
			if err := n.scanRange(rc, st, key, datum.PrefixEnd(key), visit); err != nil {
				return err
			}
			continue
		}
		if n.lock {
			if err := rc.s.lockRow(n.t.DataName(), key); err != nil {
				return err
			}
		}
		v, found, err := rc.s.tx.Get(st, key)
		if err != nil {
			return err
		}
		if found {
			if err := visit(key, v, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// scanRange visits the rows with keys in [start, end) (end nil: no bound).
func (n *scanNode) scanRange(rc *runCtx, st *storage.Table, start, end []byte, visit func(key, val []byte, lockIt bool) error) error {
	tx := rc.s.tx
	// Rows are collected per batch so that fn may use the transaction
	// (e.g. nested scans) outside the engine's scan callback. The first
	// batch is small and later ones grow: a scan stopped early by LIMIT
	// then records only the few keys it read in the transaction's scan
	// set, so inserts further along the range (TPC-C's new orders behind
	// the one Delivery takes) do not fail its validation.
	batch := 8
	for {
		type kv struct{ k, v []byte }
		var rows []kv
		var last []byte
		err := tx.Scan(st, start, end, func(k, v []byte) bool {
			rows = append(rows, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
			last = rows[len(rows)-1].k
			return len(rows) < batch
		})
		if err != nil {
			return err
		}
		if rc.s.canceled.Load() {
			return errCanceled
		}
		for _, r := range rows {
			if err := visit(r.k, r.v, n.lock); err != nil {
				return err
			}
		}
		if len(rows) < batch {
			return nil
		}
		start = append(last, 0)
		batch = min(batch*4, 256)
	}
}

// conjuncts splits an expression at top-level ANDs.
func conjuncts(e tree.Expr, out []tree.Expr) []tree.Expr {
	switch n := e.(type) {
	case nil:
		return out
	case *tree.AndExpr:
		return conjuncts(n.Right, conjuncts(n.Left, out))
	case *tree.ParenExpr:
		if _, ok := n.Expr.(*tree.AndExpr); ok {
			return conjuncts(n.Expr, out)
		}
	}
	return append(out, e)
}

// planScan builds a scan of t in scope sc (the table's columns, parent the
// enclosing scopes) choosing the access path from conds, which are all
// applied as the filter.
func (c *compiler) planScan(t *catalog.Table, sc *scope, conds []tree.Expr) (*scanNode, error) {
	n := &scanNode{t: t, cs: sc.cols}
	eq := map[int]*expr{}
	lo := map[int]*bound{}
	hi := map[int]*bound{}
	var filter []*expr
	var ins []inAccess
	for _, cond := range conds {
		x, err := c.compile(cond, sc, datum.TBool)
		if err != nil {
			return nil, err
		}
		filter = append(filter, x)
		if in := c.inListAccess(cond, sc); in != nil {
			ins = append(ins, *in)
			continue
		}
		cmp, ok := cond.(*tree.ComparisonExpr)
		if !ok {
			if rc, ok := cond.(*tree.RangeCond); ok && !rc.Not && !rc.Symmetric {
				l, err := c.compile(rc.Left, sc, datum.Type{})
				if err == nil && l.col >= 0 {
					f, err1 := c.compile(rc.From, sc, l.t)
					tt, err2 := c.compile(rc.To, sc, l.t)
					if err1 == nil && err2 == nil && f.rowFree() && tt.rowFree() {
						lo[l.col] = &bound{f, true}
						hi[l.col] = &bound{tt, true}
					}
				}
			}
			continue
		}
		op := cmp.Operator
		if op != tree.EQ && op != tree.LT && op != tree.LE && op != tree.GT && op != tree.GE {
			continue
		}
		a, b, err := c.compilePair(cmp.Left, cmp.Right, sc)
		if err != nil {
			return nil, err
		}
		if b.col >= 0 && a.rowFree() && a.col < 0 {
			a, b = b, a
			switch op {
			case tree.LT:
				op = tree.GT
			case tree.LE:
				op = tree.GE
			case tree.GT:
				op = tree.LT
			case tree.GE:
				op = tree.LE
			}
		}
		if a.col < 0 || !b.rowFree() {
			continue
		}
		// Only same-kind comparisons may use the key order.
		if a.t.Kind() != b.t.Kind() && b.t.OID != datum.OIDUnknown {
			ka, kb := a.t.Kind(), b.t.Kind()
			if !(ka == datum.KNumeric && kb == datum.KInt) {
				continue
			}
		}
		switch op {
		case tree.EQ:
			eq[a.col] = b
		case tree.GT, tree.GE:
			lo[a.col] = &bound{b, op == tree.GE}
		case tree.LT, tree.LE:
			hi[a.col] = &bound{b, op == tree.LE}
		}
	}
	if len(filter) > 0 {
		n.filter = andAll(filter)
	}
	prefix := func(cols []int) []*expr {
		var out []*expr
		for _, ci := range cols {
			e, ok := eq[ci]
			if !ok {
				break
			}
			out = append(out, e)
		}
		return out
	}
	best, bestLen := (*catalog.Index)(nil), 0
	for i := range t.Indexes {
		ix := &t.Indexes[i]
		if l := len(prefix(ix.Cols)); l > bestLen {
			best, bestLen = ix, l
		}
	}
	if alts := multiPrefixes(t.PK, eq, ins); len(alts) > 0 && len(alts[0]) > len(prefix(t.PK)) && len(alts[0]) >= bestLen {
		n.acc, n.keyCol, n.alts = accMulti, t.PK, alts
		return n, nil
	}
	if len(t.PK) > 0 {
		p := prefix(t.PK)
		n.keyCol = t.PK
		switch {
		case len(p) == len(t.PK):
			n.acc, n.eq = accPoint, p
			return n, nil
		case len(p) > 0 || lo[t.PK[0]] != nil || hi[t.PK[0]] != nil:
			next := t.PK[len(p)]
			n.acc, n.eq, n.lo, n.hi = accRange, p, lo[next], hi[next]
			// A secondary index with a longer equality prefix narrows
			// the scan further (TPC-C: orders by warehouse, district and
			// customer rather than the whole district), despite the extra
			// primary-key lookup per row.
			if bestLen <= len(p) {
				return n, nil
			}
		}
	}
	if best != nil {
		n.acc, n.index, n.eq = accIndex, best, prefix(best.Cols)
		return n, nil
	}
	if n.acc == accRange {
		return n, nil
	}
	n.acc = accFull
	return n, nil
}

// inAccess is an IN list usable as an access path: columns cols (of the
// table) take the values of one of items (row-free expressions).
type inAccess struct {
	cols  []int
	items [][]*expr
}

// inListAccess recognises col IN (v, ...) and (c1, c2, ...) IN ((v1, v2),
// ...) over plain columns with row-free, same-kind values.
func (c *compiler) inListAccess(cond tree.Expr, sc *scope) *inAccess {
	cmp, ok := cond.(*tree.ComparisonExpr)
	if !ok || cmp.Operator != tree.In {
		return nil
	}
	list, ok := cmp.Right.(*tree.Tuple)
	if !ok || len(list.Exprs) == 0 || len(list.Exprs) > maxMultiKeys {
		return nil
	}
	left := rowExprs(cmp.Left)
	if left == nil {
		left = tree.Exprs{cmp.Left}
	}
	saved := append([]datum.Type(nil), c.params...)
	fail := func() *inAccess { c.params = saved; return nil }
	in := &inAccess{}
	var types []datum.Type
	for _, l := range left {
		x, err := c.compile(l, sc, datum.Type{})
		if err != nil || x.col < 0 {
			return fail()
		}
		if _, isName := l.(*tree.UnresolvedName); !isName {
			return fail()
		}
		in.cols = append(in.cols, x.col)
		types = append(types, x.t)
	}
	for _, it := range list.Exprs {
		elems := tree.Exprs{it}
		if len(left) > 1 {
			if elems = rowExprs(it); len(elems) != len(left) {
				return fail()
			}
		}
		vals := make([]*expr, len(elems))
		for j, el := range elems {
			v, err := c.compile(el, sc, types[j])
			if err != nil || !v.rowFree() {
				return fail()
			}
			ka, kb := types[j].Kind(), v.t.Kind()
			if ka != kb && v.t.OID != datum.OIDUnknown && !(ka == datum.KNumeric && kb == datum.KInt) {
				return fail()
			}
			vals[j] = v
		}
		in.items = append(in.items, vals)
	}
	return in
}

// multiPrefixes combines equalities and IN lists on primary-key columns
// into key prefixes (the product of the lists, at most maxMultiKeys), all
// of one length; nil when no IN list applies.
func multiPrefixes(pk []int, eq map[int]*expr, ins []inAccess) [][]*expr {
	if len(pk) == 0 || len(ins) == 0 {
		return nil
	}
	isPK := map[int]bool{}
	for _, ci := range pk {
		isPK[ci] = true
	}
	alts := []map[int]*expr{{}}
	used := false
	for _, in := range ins {
		ok := true
		for _, ci := range in.cols {
			if !isPK[ci] || alts[0][ci] != nil {
				ok = false // not a key column, or already constrained by a list
			}
		}
		if !ok || len(alts)*len(in.items) > maxMultiKeys {
			continue
		}
		var next []map[int]*expr
		for _, a := range alts {
			for _, it := range in.items {
				m := make(map[int]*expr, len(a)+len(it))
				for k, v := range a {
					m[k] = v
				}
				for j, ci := range in.cols {
					m[ci] = it[j]
				}
				next = append(next, m)
			}
		}
		alts, used = next, true
	}
	if !used {
		return nil
	}
	out := make([][]*expr, len(alts))
	for i, a := range alts {
		for _, ci := range pk {
			e := a[ci]
			if e == nil {
				e = eq[ci]
			}
			if e == nil {
				break
			}
			out[i] = append(out[i], e)
		}
	}
	if len(out[0]) == 0 {
		return nil
	}
	return out
}

// memoScanNode serves a correlated table scan whose correlation is only in
// equalities the access path cannot use (inner column = outer value): the
// uncorrelated part is scanned once per execution into a hash table keyed
// by the inner columns, and each run probes it with the outer values.
// Without it, a correlated subquery over a large table rescans it for
// every outer row (TPC-C's consistency checks: history per customer).
type memoScanNode struct {
	base   *scanNode
	keys   []*expr // inner columns, over the base row
	probes []*expr // outer values, row-free
	rest   *expr   // remaining conditions over the base row (may be nil)
	key    *int    // rc.cache key
}

func (n *memoScanNode) cols() []col { return n.base.cols() }
func (n *memoScanNode) run(rc *runCtx, emit func(Row) error) error {
	var table map[string][]Row
	if v, ok := rc.cached(n.key); ok {
		table = v.(map[string][]Row)
	} else {
		var err error
		if table, err = buildHashTable(rc, n.base, n.keys); err != nil {
			return err
		}
		rc.store(n.key, table)
	}
	k, ok, err := hashKey(rc, n.probes, nil)
	if err != nil || !ok {
		return err
	}
	for _, r := range table[k] {
		if n.rest != nil {
			v, err := n.rest.fn(rc, r)
			if err != nil {
				return err
			}
			if !v.True() {
				continue
			}
		}
		if err := emit(r); err != nil {
			return err
		}
	}
	return nil
}

// tryMemoScan returns a memoScanNode for a scan of src with conditions
// conds in scope rsc (whose parents are the enclosing queries), or nil when
// there is no correlated equality or the planned scan normal already uses
// one in its access path.
func (c *compiler) tryMemoScan(src *source, rsc *scope, conds []tree.Expr, normal *scanNode) (plan, error) {
	local := &scope{cols: src.cs}
	var localConds, rest []tree.Expr
	var keys, probes []*expr
	for _, cond := range conds {
		if c.compiles(cond, local) {
			localConds = append(localConds, cond)
			continue
		}
		matched := false
		if cmp, ok := cond.(*tree.ComparisonExpr); ok && cmp.Operator == tree.EQ {
			for _, pair := range [][2]tree.Expr{{cmp.Left, cmp.Right}, {cmp.Right, cmp.Left}} {
				if !c.compiles(pair[0], local) || c.compiles(pair[1], local) || !c.compiles(pair[1], rsc) {
					continue
				}
				k, err := c.compile(pair[0], local, datum.Type{})
				if err != nil {
					return nil, err
				}
				p, err := c.compile(pair[1], rsc, k.t)
				if err != nil {
					return nil, err
				}
				if k.col < 0 || !p.rowFree() {
					continue
				}
				keys, probes = append(keys, k), append(probes, p)
				matched = true
				break
			}
		}
		if !matched {
			rest = append(rest, cond)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	base, err := c.planScan(src.table, local, localConds)
	if err != nil {
		return nil, err
	}
	if normal.acc != base.acc || len(normal.eq) != len(base.eq) {
		return nil, nil // the correlation narrows the access path itself
	}
	m := &memoScanNode{base: base, keys: keys, probes: probes, key: new(int)}
	if len(rest) > 0 {
		cond, err := c.compileAll(rest, rsc)
		if err != nil {
			return nil, err
		}
		m.rest = cond
	}
	return m, nil
}

// compileAll compiles conditions that must all hold into one.
func (c *compiler) compileAll(conds []tree.Expr, sc *scope) (*expr, error) {
	fs := make([]*expr, 0, len(conds))
	for _, cond := range conds {
		x, err := c.compile(cond, sc, datum.TBool)
		if err != nil {
			return nil, err
		}
		fs = append(fs, x)
	}
	return andAll(fs), nil
}

func andAll(xs []*expr) *expr {
	if len(xs) == 1 {
		return xs[0]
	}
	return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
		null := false
		for _, x := range xs {
			v, err := x.fn(rc, row)
			if err != nil {
				return v, err
			}
			if v.IsNull() {
				null = true
				continue
			}
			if !v.True() {
				return datum.Bool(false), nil
			}
		}
		if null {
			return datum.Null, nil
		}
		return datum.Bool(true), nil
	}, xs...)
}
