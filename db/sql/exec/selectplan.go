package exec

import (
	"sort"
	"strconv"
	"strings"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// ---- simple operators ----

type oneRowNode struct{}

func (oneRowNode) cols() []col { return nil }
func (oneRowNode) run(rc *runCtx, emit func(Row) error) error {
	return emit(Row{})
}

type filterNode struct {
	in   plan
	cond *expr
}

func (n *filterNode) cols() []col { return n.in.cols() }
func (n *filterNode) run(rc *runCtx, emit func(Row) error) error {
	return n.in.run(rc, func(r Row) error {
		v, err := n.cond.fn(rc, r)
		if err != nil {
			return err
		}
		if v.True() {
			return emit(r)
		}
		return nil
	})
}

type projectNode struct {
	in    plan
	exprs []*expr
	cs    []col
}

func (n *projectNode) cols() []col { return n.cs }
func (n *projectNode) run(rc *runCtx, emit func(Row) error) error {
	return n.in.run(rc, func(r Row) error {
		out := make(Row, len(n.exprs))
		for i, e := range n.exprs {
			v, err := e.fn(rc, r)
			if err != nil {
				return err
			}
			out[i] = v
		}
		return emit(out)
	})
}

// renameNode gives a plan's columns new names and a table alias.
type renameNode struct {
	in plan
	cs []col
}

func (n *renameNode) cols() []col                                { return n.cs }
func (n *renameNode) run(rc *runCtx, emit func(Row) error) error { return n.in.run(rc, emit) }

type valuesNode struct {
	rows [][]*expr
	cs   []col
}

func (n *valuesNode) cols() []col { return n.cs }
func (n *valuesNode) run(rc *runCtx, emit func(Row) error) error {
	for _, r := range n.rows {
		out := make(Row, len(r))
		for i, e := range r {
			v, err := e.fn(rc, nil)
			if err != nil {
				return err
			}
			out[i] = v
		}
		if err := emit(out); err != nil {
			return err
		}
	}
	return nil
}

type limitNode struct {
	in            plan
	limit, offset *expr
}

func (n *limitNode) cols() []col { return n.in.cols() }
func (n *limitNode) run(rc *runCtx, emit func(Row) error) error {
	lim, off := int64(-1), int64(0)
	if n.limit != nil {
		v, err := n.limit.fn(rc, nil)
		if err != nil {
			return err
		}
		if !v.IsNull() {
			if v, err = datum.Cast(v, datum.TInt8); err != nil {
				return err
			}
			lim = v.I
		}
	}
	if n.offset != nil {
		v, err := n.offset.fn(rc, nil)
		if err != nil {
			return err
		}
		if !v.IsNull() {
			if v, err = datum.Cast(v, datum.TInt8); err != nil {
				return err
			}
			off = v.I
		}
	}
	if lim == 0 {
		return nil
	}
	seen, sent := int64(0), int64(0)
	err := n.in.run(rc, func(r Row) error {
		seen++
		if seen <= off {
			return nil
		}
		sent++
		if err := emit(r); err != nil {
			return err
		}
		if lim >= 0 && sent >= lim {
			return errLimit
		}
		return nil
	})
	if err == errLimit {
		return nil
	}
	return err
}

var errLimit = sqlerr.New(sqlerr.Internal, "limit reached")

var errCanceled = sqlerr.New(sqlerr.QueryCanceled, "canceling statement due to user request")

type sortKey struct {
	col        int
	desc       bool
	nullsFirst bool
}

type sortNode struct {
	in   plan
	keys []sortKey
	// keep: number of leading columns to emit (the rest were sort-only).
	keep int
}

func (n *sortNode) cols() []col { return n.in.cols()[:n.keep] }
func (n *sortNode) run(rc *runCtx, emit func(Row) error) error {
	var rows []Row
	if err := n.in.run(rc, func(r Row) error { rows = append(rows, r); return nil }); err != nil {
		return err
	}
	sort.SliceStable(rows, func(i, j int) bool {
		for _, k := range n.keys {
			a, b := rows[i][k.col], rows[j][k.col]
			var c int
			switch {
			case a.IsNull() && b.IsNull():
				c = 0
			case a.IsNull():
				c = 1
				if k.nullsFirst {
					c = -1
				}
			case b.IsNull():
				c = -1
				if k.nullsFirst {
					c = 1
				}
			default:
				c = datum.Compare(a, b)
				if k.desc {
					c = -c
				}
			}
			if c != 0 {
				return c < 0
			}
		}
		return false
	})
	for _, r := range rows {
		if err := emit(r[:n.keep]); err != nil {
			return err
		}
	}
	return nil
}

func rowKey(b []byte, r Row) []byte {
	for _, v := range r {
		if v.K == datum.KInt || v.K == datum.KNumeric || v.K == datum.KFloat {
			// Equal numbers of different kinds must group together.
			v = datum.Float(v.AsFloat())
			if f := v.F; f == float64(int64(f)) {
				v = datum.Int(int64(f))
			}
		}
		b = datum.AppendKey(b, v)
	}
	return b
}

type distinctNode struct {
	in plan
}

func (n *distinctNode) cols() []col { return n.in.cols() }
func (n *distinctNode) run(rc *runCtx, emit func(Row) error) error {
	seen := map[string]bool{}
	return n.in.run(rc, func(r Row) error {
		k := string(rowKey(nil, r))
		if seen[k] {
			return nil
		}
		seen[k] = true
		return emit(r)
	})
}

type unionNode struct {
	left, right plan
	all         bool
	op          string // "UNION", "INTERSECT", "EXCEPT"
}

func (n *unionNode) cols() []col { return n.left.cols() }
func (n *unionNode) run(rc *runCtx, emit func(Row) error) error {
	switch n.op {
	case "UNION":
		seen := map[string]bool{}
		f := func(r Row) error {
			if !n.all {
				k := string(rowKey(nil, r))
				if seen[k] {
					return nil
				}
				seen[k] = true
			}
			return emit(r)
		}
		if err := n.left.run(rc, f); err != nil {
			return err
		}
		return n.right.run(rc, f)
	}
	right := map[string]int{}
	if err := n.right.run(rc, func(r Row) error { right[string(rowKey(nil, r))]++; return nil }); err != nil {
		return err
	}
	emitted := map[string]bool{}
	return n.left.run(rc, func(r Row) error {
		k := string(rowKey(nil, r))
		in := right[k] > 0
		if (n.op == "INTERSECT") != in {
			return nil
		}
		if n.all {
			if n.op == "INTERSECT" {
				right[k]--
			}
		} else {
			if emitted[k] {
				return nil
			}
			emitted[k] = true
		}
		return emit(r)
	})
}

// ---- joins ----

// applyJoin runs right once per left row with the left row as its outer
// row (index nested-loop join, or nested loop over a materialised right).
type applyJoin struct {
	left, right plan
	leftOuter   bool
	cs          []col
	nRight      int
}

func (n *applyJoin) cols() []col { return n.cs }
func (n *applyJoin) run(rc *runCtx, emit func(Row) error) error {
	return n.left.run(rc, func(l Row) error {
		if rc.s.canceled.Load() {
			return errCanceled
		}
		matched := false
		rc.outer = append(rc.outer, l)
		var rows []Row
		err := n.right.run(rc, func(r Row) error { rows = append(rows, r); return nil })
		rc.outer = rc.outer[:len(rc.outer)-1]
		if err != nil {
			return err
		}
		for _, r := range rows {
			matched = true
			out := make(Row, 0, len(l)+len(r))
			out = append(append(out, l...), r...)
			if err := emit(out); err != nil {
				return err
			}
		}
		if !matched && n.leftOuter {
			out := make(Row, len(l)+n.nRight)
			copy(out, l)
			return emit(out)
		}
		return nil
	})
}

// hashJoin builds a hash table on the right input's keys and probes it
// with the left rows.
type hashJoin struct {
	left, right  plan
	lkeys, rkeys []*expr
	extra        *expr // residual condition over the joined row
	leftOuter    bool
	cs           []col
	nRight       int
}

func (n *hashJoin) cols() []col { return n.cs }

// hashKey evaluates keys on r into a hash-table key; ok is false when a
// key is NULL (which matches nothing).
func hashKey(rc *runCtx, keys []*expr, r Row) (key string, ok bool, err error) {
	vals := make(Row, len(keys))
	for i, k := range keys {
		v, err := k.fn(rc, r)
		if err != nil {
			return "", false, err
		}
		if v.IsNull() {
			return "", false, nil
		}
		vals[i] = v
	}
	return string(rowKey(nil, vals)), true, nil
}

// buildHashTable runs p and groups its rows by keys (rows with a NULL key
// match nothing and are left out).
func buildHashTable(rc *runCtx, p plan, keys []*expr) (map[string][]Row, error) {
	table := map[string][]Row{}
	err := p.run(rc, func(r Row) error {
		k, ok, err := hashKey(rc, keys, r)
		if err != nil || !ok {
			return err
		}
		table[k] = append(table[k], r)
		return nil
	})
	return table, err
}

func (n *hashJoin) run(rc *runCtx, emit func(Row) error) error {
	table, err := buildHashTable(rc, n.right, n.rkeys)
	if err != nil {
		return err
	}
	return n.left.run(rc, func(l Row) error {
		k, ok, err := hashKey(rc, n.lkeys, l)
		if err != nil {
			return err
		}
		matched := false
		if ok {
			for _, r := range table[k] {
				out := make(Row, 0, len(l)+len(r))
				out = append(append(out, l...), r...)
				if n.extra != nil {
					v, err := n.extra.fn(rc, out)
					if err != nil {
						return err
					}
					if !v.True() {
						continue
					}
				}
				matched = true
				if err := emit(out); err != nil {
					return err
				}
			}
		}
		if !matched && n.leftOuter {
			out := make(Row, len(l)+n.nRight)
			copy(out, l)
			return emit(out)
		}
		return nil
	})
}

// ---- FROM planning ----

type fromItem struct {
	te        tree.TableExpr
	leftOuter bool
	on        []tree.Expr
	using     []string
}

// flattenFrom turns a FROM list into a left-deep sequence of items.
func flattenFrom(tes tree.TableExprs) ([]fromItem, error) {
	var out []fromItem
	var add func(te tree.TableExpr, left bool, on []tree.Expr, using []string) error
	add = func(te tree.TableExpr, left bool, on []tree.Expr, using []string) error {
		switch j := te.(type) {
		case *tree.ParenTableExpr:
			return add(j.Expr, left, on, using)
		case *tree.JoinTableExpr:
			switch j.JoinType {
			case "", tree.AstInner, tree.AstCross, tree.AstLeft:
			default:
				return sqlerr.New(sqlerr.FeatureNotSupported, "%s JOIN is not supported", j.JoinType)
			}
			if len(out) > 0 || left || on != nil {
				// A join nested on the right: plan it as one derived item.
				if _, nested := j.Right.(*tree.JoinTableExpr); nested {
					return sqlerr.New(sqlerr.FeatureNotSupported, "nested joins on the right are not supported")
				}
			}
			if err := add(j.Left, left, on, using); err != nil {
				return err
			}
			var jon []tree.Expr
			var jusing []string
			switch cond := j.Cond.(type) {
			case *tree.OnJoinCond:
				jon = conjuncts(cond.Expr, nil)
			case *tree.UsingJoinCond:
				for _, c := range cond.Cols {
					jusing = append(jusing, string(c))
				}
			case *tree.NaturalJoinCond:
				return sqlerr.New(sqlerr.FeatureNotSupported, "NATURAL JOIN is not supported")
			}
			return add(j.Right, j.JoinType == tree.AstLeft, jon, jusing)
		}
		out = append(out, fromItem{te: te, leftOuter: left, on: on, using: using})
		return nil
	}
	for _, te := range tes {
		if err := add(te, false, nil, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// source is a FROM item resolved to a base table, a virtual table or a
// derived plan.
type source struct {
	table *catalog.Table
	plan  plan
	cs    []col
}

func (c *compiler) resolveSource(te tree.TableExpr, outer *scope) (*source, error) {
	alias := ""
	var aliasCols []string
	if a, ok := te.(*tree.AliasedTableExpr); ok {
		alias = string(a.As.Alias)
		for _, cn := range a.As.Cols {
			aliasCols = append(aliasCols, string(cn))
		}
		te = a.Expr
	}
	var src *source
	switch t := te.(type) {
	case *tree.TableName:
		name := string(t.TableName)
		schema := string(t.SchemaName)
		if alias == "" {
			alias = name
		}
		var tbl *catalog.Table
		if schema != "pg_catalog" && schema != "information_schema" {
			tbl = c.s.lookupTable(name)
		}
		if tbl != nil {
			cs := make([]col, len(tbl.Columns))
			for i, cc := range tbl.Columns {
				cs[i] = col{name: cc.Name, table: alias, typ: cc.Type, tableOID: tbl.OID(), attnum: int16(i + 1)}
			}
			src = &source{table: tbl, cs: cs}
		} else if v := virtualTable(schema, name); v != nil {
			cs := make([]col, len(v.cols))
			for i, cc := range v.cols {
				cs[i] = col{name: cc.name, table: alias, typ: cc.typ}
			}
			src = &source{plan: &virtualNode{v: v, cs: cs}, cs: cs}
		} else {
			return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", name)
		}
	case *tree.Subquery:
		p, err := c.planSelectStmt(&tree.Select{Select: t.Select}, outer)
		if err != nil {
			return nil, err
		}
		cs := append([]col(nil), p.cols()...)
		for i := range cs {
			cs[i].table = alias
		}
		src = &source{plan: &renameNode{in: p, cs: cs}, cs: cs}
	default:
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "FROM item %s is not supported", tree.AsString(te))
	}
	if len(aliasCols) > 0 {
		cs := append([]col(nil), src.cs...)
		for i := range cs {
			if i < len(aliasCols) {
				cs[i].name = aliasCols[i]
			}
		}
		if src.plan == nil {
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "column aliases on tables are not supported")
		}
		src.cs = cs
		src.plan = &renameNode{in: src.plan, cs: cs}
	}
	return src, nil
}

// compiles reports whether e compiles in sc (names resolve).
func (c *compiler) compiles(e tree.Expr, sc *scope) bool {
	saved := append([]datum.Type(nil), c.params...)
	_, err := c.compile(e, sc, datum.TBool)
	c.params = saved
	return err == nil
}

// planFrom plans the FROM clause and the WHERE conjuncts that can be
// applied inside it; it returns the remaining conjuncts.
func (c *compiler) planFrom(from tree.TableExprs, where []tree.Expr, outer *scope, lock bool) (plan, *scope, []tree.Expr, error) {
	if len(from) == 0 {
		return oneRowNode{}, &scope{parent: outer}, where, nil
	}
	flat, err := flattenFrom(from)
	if err != nil {
		return nil, nil, nil, err
	}
	items := make([]resolvedItem, len(flat))
	pending := impliedEqualities(where)
	// WHERE conjuncts may not be pushed below the null-extended side of a
	// LEFT JOIN.
	var cur plan
	var curScope *scope
	for i, f := range flat {
		// Later items see the earlier ones (as LATERAL would); that is
		// also what the nested-loop join that runs them provides.
		srcParent := outer
		if i > 0 {
			srcParent = curScope
		}
		var src *source
		uncorrelated := false
		if i > 0 && isDerived(f.te) {
			// A derived table that does not refer to the items before it
			// can be run once per execution (hashed or materialised)
			// instead of once per left row.
			saved := append([]datum.Type(nil), c.params...)
			if src, err = c.resolveSource(f.te, outer); err == nil {
				uncorrelated = true
			} else if sqlerr.Code(err) == sqlerr.UndefinedColumn {
				c.params = saved
				src = nil
			} else {
				return nil, nil, nil, err
			}
		}
		if src == nil {
			if src, err = c.resolveSource(f.te, srcParent); err != nil {
				return nil, nil, nil, err
			}
		}
		items[i] = resolvedItem{fromItem: f, src: src}
		it := items[i]
		var conds []tree.Expr
		if it.leftOuter {
			conds = append(conds, it.on...)
		} else {
			conds = append(conds, it.on...)
		}
		for _, u := range it.using {
			conds = append(conds, &tree.ComparisonExpr{Operator: tree.EQ,
				Left:  &tree.UnresolvedName{NumParts: 2, Parts: tree.NameParts{u, items[i-1].alias()}},
				Right: &tree.UnresolvedName{NumParts: 2, Parts: tree.NameParts{u, src.cs[0].table}}})
		}
		var parent *scope
		if i == 0 {
			parent = outer
		} else {
			parent = curScope
		}
		rsc := &scope{cols: src.cs, parent: parent}
		if !it.leftOuter {
			var rest []tree.Expr
			for _, w := range pending {
				if c.compiles(w, rsc) {
					conds = append(conds, w)
				} else {
					rest = append(rest, w)
				}
			}
			pending = rest
		}
		var right plan
		var hashed *hashJoin
		if src.table != nil {
			sn, err := c.planScan(src.table, rsc, conds)
			if err != nil {
				return nil, nil, nil, err
			}
			sn.lock = lock
			right = sn
			if i == 0 && outer != nil && !lock && sn.acc != accPoint {
				m, err := c.tryMemoScan(src, rsc, conds, sn)
				if err != nil {
					return nil, nil, nil, err
				}
				if m != nil {
					right = m
				}
			}
			if i > 0 && sn.acc == accFull {
				hashed, err = c.tryHashJoin(src, curScope, conds, outer, lock)
				if err != nil {
					return nil, nil, nil, err
				}
			}
		} else {
			if uncorrelated {
				hashed, err = c.tryHashJoin(src, curScope, conds, outer, lock)
				if err != nil {
					return nil, nil, nil, err
				}
			}
			right = src.plan
			if uncorrelated && hashed == nil {
				right = &materializeNode{in: right, key: new(int)}
			}
			if len(conds) > 0 {
				cond, err := c.compileAll(conds, rsc)
				if err != nil {
					return nil, nil, nil, err
				}
				right = &filterNode{in: right, cond: cond}
			}
		}
		if i == 0 {
			cur, curScope = right, &scope{cols: src.cs, parent: outer}
			continue
		}
		cs := append(append([]col(nil), curScope.cols...), src.cs...)
		if hashed != nil {
			hashed.left, hashed.leftOuter, hashed.cs, hashed.nRight = cur, it.leftOuter, cs, len(src.cs)
			cur = hashed
		} else {
			cur = &applyJoin{left: cur, right: right, leftOuter: it.leftOuter, cs: cs, nRight: len(src.cs)}
		}
		curScope = &scope{cols: cs, parent: outer}
	}
	return cur, curScope, pending, nil
}

// isDerived reports whether te is a subquery in FROM.
func isDerived(te tree.TableExpr) bool {
	if a, ok := te.(*tree.AliasedTableExpr); ok {
		te = a.Expr
	}
	_, ok := te.(*tree.Subquery)
	return ok
}

// materializeNode runs its input once per execution and replays the rows,
// for an uncorrelated derived table on the inner side of a nested loop.
type materializeNode struct {
	in  plan
	key *int // rc.cache key
}

func (n *materializeNode) cols() []col { return n.in.cols() }
func (n *materializeNode) run(rc *runCtx, emit func(Row) error) error {
	v, ok := rc.cached(n.key)
	if !ok {
		var rows []Row
		if err := n.in.run(rc, func(r Row) error { rows = append(rows, r); return nil }); err != nil {
			return err
		}
		rc.store(n.key, rows)
		v = rows
	}
	for _, r := range v.([]Row) {
		if err := emit(r); err != nil {
			return err
		}
	}
	return nil
}

type resolvedItem struct {
	fromItem
	src *source
}

func (r resolvedItem) alias() string {
	if len(r.src.cs) > 0 {
		return r.src.cs[0].table
	}
	return ""
}

func (c *compiler) flattenAndResolve(from tree.TableExprs, outer *scope) ([]resolvedItem, error) {
	flat, err := flattenFrom(from)
	if err != nil {
		return nil, err
	}
	out := make([]resolvedItem, len(flat))
	for i, f := range flat {
		src, err := c.resolveSource(f.te, outer)
		if err != nil {
			return nil, err
		}
		out[i] = resolvedItem{fromItem: f, src: src}
	}
	return out, nil
}

// tryHashJoin builds a hash join of the accumulated left side with src when
// conds contain equalities between the two sides. Conditions that refer to
// the right side only are pushed into its scan.
func (c *compiler) tryHashJoin(src *source, left *scope, conds []tree.Expr, outer *scope, lock bool) (*hashJoin, error) {
	rsc := &scope{cols: src.cs, parent: outer}
	lsc := &scope{cols: left.cols, parent: outer}
	joined := &scope{cols: append(append([]col(nil), left.cols...), src.cs...), parent: outer}
	var lkeys, rkeys []*expr
	var rightOnly, residual []tree.Expr
	for _, cond := range conds {
		if c.compiles(cond, rsc) {
			rightOnly = append(rightOnly, cond)
			continue
		}
		if cmp, ok := cond.(*tree.ComparisonExpr); ok && cmp.Operator == tree.EQ {
			if c.compiles(cmp.Left, lsc) && c.compiles(cmp.Right, rsc) {
				l, _ := c.compile(cmp.Left, lsc, datum.Type{})
				r, _ := c.compile(cmp.Right, rsc, datum.Type{})
				lkeys, rkeys = append(lkeys, l), append(rkeys, r)
				continue
			}
			if c.compiles(cmp.Right, lsc) && c.compiles(cmp.Left, rsc) {
				l, _ := c.compile(cmp.Right, lsc, datum.Type{})
				r, _ := c.compile(cmp.Left, rsc, datum.Type{})
				lkeys, rkeys = append(lkeys, l), append(rkeys, r)
				continue
			}
		}
		residual = append(residual, cond)
	}
	if len(lkeys) == 0 {
		return nil, nil
	}
	var right plan
	if src.table != nil {
		sn, err := c.planScan(src.table, rsc, rightOnly)
		if err != nil {
			return nil, err
		}
		sn.lock = lock
		right = sn
	} else {
		right = src.plan
		if len(rightOnly) > 0 {
			cond, err := c.compileAll(rightOnly, rsc)
			if err != nil {
				return nil, err
			}
			right = &filterNode{in: right, cond: cond}
		}
	}
	hj := &hashJoin{right: right, lkeys: lkeys, rkeys: rkeys}
	if len(residual) > 0 {
		cond, err := c.compileAll(residual, joined)
		if err != nil {
			return nil, err
		}
		hj.extra = cond
	}
	return hj, nil
}

// ---- SELECT ----

func (c *compiler) planSelectStmt(sel *tree.Select, outer *scope) (plan, error) {
	if sel.With != nil {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "WITH is not supported")
	}
	lock := false
	for _, l := range sel.Locking {
		if l.Strength >= tree.ForNoKeyUpdate || l.Strength == tree.ForShare {
			lock = true
		}
	}
	var p plan
	var err error
	switch s := sel.Select.(type) {
	case *tree.SelectClause:
		p, err = c.planSelectClause(s, sel.OrderBy, outer, lock)
		if err != nil {
			return nil, err
		}
	case *tree.ParenSelect:
		if p, err = c.planSelectStmt(s.Select, outer); err != nil {
			return nil, err
		}
		if p, err = c.orderOutput(p, sel.OrderBy); err != nil {
			return nil, err
		}
	case *tree.ValuesClause:
		if p, err = c.planValues(s, outer, nil); err != nil {
			return nil, err
		}
		if p, err = c.orderOutput(p, sel.OrderBy); err != nil {
			return nil, err
		}
	case *tree.UnionClause:
		l, err := c.planSelectStmt(s.Left, outer)
		if err != nil {
			return nil, err
		}
		r, err := c.planSelectStmt(s.Right, outer)
		if err != nil {
			return nil, err
		}
		if len(l.cols()) != len(r.cols()) {
			return nil, sqlerr.New(sqlerr.SyntaxError, "each %s query must have the same number of columns", s.Type)
		}
		op := "UNION"
		switch s.Type {
		case tree.IntersectOp:
			op = "INTERSECT"
		case tree.ExceptOp:
			op = "EXCEPT"
		}
		p = &unionNode{left: l, right: r, all: s.All, op: op}
		if p, err = c.orderOutput(p, sel.OrderBy); err != nil {
			return nil, err
		}
	default:
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "statement %s is not supported", tree.AsString(sel))
	}
	if sel.Limit != nil && (sel.Limit.Count != nil || sel.Limit.Offset != nil) {
		ln := &limitNode{in: p}
		if sel.Limit.Count != nil {
			if ln.limit, err = c.compile(sel.Limit.Count, &scope{parent: outer}, datum.TInt8); err != nil {
				return nil, err
			}
		}
		if sel.Limit.Offset != nil {
			if ln.offset, err = c.compile(sel.Limit.Offset, &scope{parent: outer}, datum.TInt8); err != nil {
				return nil, err
			}
		}
		p = ln
	}
	return p, nil
}

// orderOutput sorts a plan by output columns (names or ordinals).
func (c *compiler) orderOutput(p plan, ob tree.OrderBy) (plan, error) {
	if len(ob) == 0 {
		return p, nil
	}
	cs := p.cols()
	var keys []sortKey
	for _, o := range ob {
		idx := -1
		switch e := o.Expr.(type) {
		case *tree.NumVal:
			i, err := e.AsInt64()
			if err != nil || i < 1 || int(i) > len(cs) {
				return nil, sqlerr.New(sqlerr.InvalidColumnReference, "ORDER BY position %s is not in select list", e.String())
			}
			idx = int(i - 1)
		case *tree.UnresolvedName:
			_, column := nameParts(e)
			for i, cc := range cs {
				if cc.name == column {
					idx = i
					break
				}
			}
		}
		if idx < 0 {
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "ORDER BY %s: only output columns are supported here", tree.AsString(o.Expr))
		}
		keys = append(keys, sortKey{col: idx, desc: o.Direction == tree.Descending, nullsFirst: nullsFirst(o)})
	}
	return &sortNode{in: p, keys: keys, keep: len(cs)}, nil
}

func nullsFirst(o *tree.Order) bool {
	switch o.NullsOrder {
	case tree.NullsFirst:
		return true
	case tree.NullsLast:
		return false
	}
	return o.Direction == tree.Descending
}

func (c *compiler) planValues(v *tree.ValuesClause, outer *scope, want []datum.Type) (plan, error) {
	n := &valuesNode{}
	sc := &scope{parent: outer}
	for ri, r := range v.Rows {
		if ri > 0 && len(r) != len(n.rows[0]) {
			return nil, sqlerr.New(sqlerr.SyntaxError, "VALUES lists must all be the same length")
		}
		row := make([]*expr, len(r))
		for i, e := range r {
			hint := datum.Type{}
			if i < len(want) {
				hint = want[i]
			} else if ri > 0 {
				hint = n.rows[0][i].t
			}
			if _, ok := e.(tree.DefaultVal); ok && want != nil {
				row[i] = &expr{t: hint, col: -1, minCol: -1, maxCol: -1, fn: defaultMarker}
				continue
			}
			x, err := c.compile(e, sc, hint)
			if err != nil {
				return nil, err
			}
			row[i] = x
		}
		n.rows = append(n.rows, row)
	}
	if len(n.rows) > 0 {
		for i, e := range n.rows[0] {
			t := e.t
			if t.OID == datum.OIDUnknown {
				t = datum.TText
			}
			n.cs = append(n.cs, col{name: "column" + itoa(i+1), typ: t})
		}
	}
	return n, nil
}

// defaultMarker stands for DEFAULT in VALUES; INSERT replaces it.
func defaultMarker(*runCtx, Row) (datum.Value, error) { return datum.Value{K: 255}, nil }

func itoa(i int) string { return strconv.Itoa(i) }

// outputName names a select-list column as PostgreSQL does.
func outputName(se tree.SelectExpr) string {
	if se.As != "" {
		return string(se.As)
	}
	e := se.Expr
	for {
		switch n := e.(type) {
		case *tree.ParenExpr:
			e = n.Expr
			continue
		case *tree.CastExpr:
			if _, ok := n.Expr.(*tree.UnresolvedName); ok {
				e = n.Expr
				continue
			}
			t, err := typeFromAST(n.Type)
			if err == nil {
				return datum.TypName(t.OID)
			}
		case *tree.AnnotateTypeExpr:
			e = n.Expr
			continue
		case *tree.UnresolvedName:
			_, column := nameParts(n)
			return column
		case *tree.ColumnItem:
			return string(n.ColumnName)
		case *tree.FuncExpr:
			return funcName(n)
		case *tree.CoalesceExpr:
			return strings.ToLower(n.Name)
		case *tree.CaseExpr:
			return "case"
		case *tree.Subquery:
			if n.Exists {
				return "exists"
			}
		}
		return "?column?"
	}
}

type selItem struct {
	e    tree.Expr
	name string
	star int // >= 0: expanded star column index in the FROM scope
}

func (c *compiler) expandSelect(exprs tree.SelectExprs, sc *scope) ([]selItem, error) {
	var items []selItem
	for _, se := range exprs {
		table, isStar := "", false
		switch e := se.Expr.(type) {
		case tree.UnqualifiedStar:
			isStar = true
		case *tree.UnqualifiedStar:
			isStar = true
		case *tree.UnresolvedName:
			if e.Star {
				isStar = true
				if e.NumParts > 1 {
					table = e.Parts[1]
				}
			}
		case *tree.AllColumnsSelector:
			isStar, table = true, e.TableName.Parts[0]
		}
		if !isStar {
			items = append(items, selItem{e: se.Expr, name: outputName(se), star: -1})
			continue
		}
		n := 0
		for i, cc := range sc.cols {
			if table == "" || cc.table == table {
				items = append(items, selItem{name: cc.name, star: i})
				n++
			}
		}
		if n == 0 && table != "" {
			return nil, sqlerr.New(sqlerr.UndefinedTable, "missing FROM-clause entry for table %q", table)
		}
		if len(sc.cols) == 0 && table == "" {
			return nil, sqlerr.New(sqlerr.SyntaxError, "SELECT * with no tables specified is not valid")
		}
	}
	return items, nil
}

func (c *compiler) planSelectClause(s *tree.SelectClause, ob tree.OrderBy, outer *scope, lock bool) (plan, error) {
	var where []tree.Expr
	if s.Where != nil {
		where = conjuncts(s.Where.Expr, nil)
	}
	p, sc, rest, err := c.planFrom(s.From.Tables, where, outer, lock)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		cond, err := c.compileAll(rest, sc)
		if err != nil {
			return nil, err
		}
		p = &filterNode{in: p, cond: cond}
	}
	items, err := c.expandSelect(s.Exprs, sc)
	if err != nil {
		return nil, err
	}
	var aggCalls []*tree.FuncExpr
	for _, it := range items {
		collectAggs(it.e, &aggCalls)
	}
	if s.Having != nil {
		collectAggs(s.Having.Expr, &aggCalls)
	}
	for _, o := range ob {
		collectAggs(o.Expr, &aggCalls)
	}
	saved := c.agg
	defer func() { c.agg = saved }()
	c.agg = nil
	if len(s.GroupBy) > 0 || len(aggCalls) > 0 || s.Having != nil {
		an := &aggNode{in: p}
		ref := &aggRef{groups: map[string]int{}, aggs: map[string]int{}, inner: sc}
		for _, g := range s.GroupBy {
			ge := g
			if nv, ok := g.(*tree.NumVal); ok {
				i, err := nv.AsInt64()
				if err != nil || i < 1 || int(i) > len(items) {
					return nil, sqlerr.New(sqlerr.InvalidColumnReference, "GROUP BY position %s is not in select list", nv.String())
				}
				it := items[i-1]
				if it.star >= 0 {
					cc := sc.cols[it.star]
					ge = &tree.UnresolvedName{NumParts: 2, Parts: tree.NameParts{cc.name, cc.table}}
				} else {
					ge = it.e
				}
			} else if un, ok := g.(*tree.UnresolvedName); ok && un.NumParts == 1 {
				// GROUP BY an output alias.
				if _, _, _, err := resolve(sc, "", un.Parts[0]); err != nil {
					for _, it := range items {
						if it.name == un.Parts[0] && it.e != nil {
							ge = it.e
						}
					}
				}
			}
			x, err := c.compile(ge, sc, datum.Type{})
			if err != nil {
				return nil, err
			}
			gc := col{name: "?group?", typ: x.t}
			if x.col >= 0 {
				gc = sc.cols[x.col]
			}
			ref.groups[tree.AsString(ge)] = len(an.groups)
			if x.col >= 0 {
				cc := sc.cols[x.col]
				ref.groups[cc.table+"."+cc.name] = len(an.groups)
				ref.groups[cc.name] = len(an.groups)
			}
			an.groups = append(an.groups, x)
			an.cs = append(an.cs, gc)
		}
		c.addDependentGroups(an, ref, sc)
		for _, f := range aggCalls {
			key := tree.AsString(f)
			if _, ok := ref.aggs[key]; ok {
				continue
			}
			spec, err := c.aggSpecFor(f, sc)
			if err != nil {
				return nil, err
			}
			ref.aggs[key] = len(an.groups) + len(an.aggs)
			an.aggs = append(an.aggs, spec)
			an.cs = append(an.cs, col{name: "?agg?", typ: spec.t})
		}
		p = an
		sc = &scope{cols: an.cs, parent: outer}
		c.agg = ref
		if s.Having != nil {
			x, err := c.compile(s.Having.Expr, sc, datum.TBool)
			if err != nil {
				return nil, err
			}
			p = &filterNode{in: p, cond: x}
		}
	}
	var exprs []*expr
	var cs []col
	for _, it := range items {
		var x *expr
		if it.star >= 0 {
			cc := sc.cols[it.star]
			x, err = c.compileColumn(sc, cc.table, cc.name)
			if err != nil {
				// Duplicate names (joins): refer by position.
				i := it.star
				x = &expr{t: cc.typ, col: i, minCol: i, maxCol: i, fn: func(_ *runCtx, row Row) (datum.Value, error) { return row[i], nil }}
			}
		} else if x, err = c.compile(it.e, sc, datum.Type{}); err != nil {
			return nil, err
		}
		oc := col{name: it.name, typ: x.t}
		if x.t.OID == datum.OIDUnknown {
			oc.typ = datum.TText
		}
		if x.col >= 0 && x.col < len(sc.cols) {
			oc.tableOID, oc.attnum = sc.cols[x.col].tableOID, sc.cols[x.col].attnum
		}
		exprs = append(exprs, x)
		cs = append(cs, oc)
	}
	nVisible := len(exprs)
	var keys []sortKey
	for _, o := range ob {
		idx := -1
		switch e := o.Expr.(type) {
		case *tree.NumVal:
			i, err := e.AsInt64()
			if err != nil || i < 1 || int(i) > nVisible {
				return nil, sqlerr.New(sqlerr.InvalidColumnReference, "ORDER BY position %s is not in select list", e.String())
			}
			idx = int(i - 1)
		case *tree.UnresolvedName:
			if e.NumParts == 1 {
				for i := 0; i < nVisible; i++ {
					if cs[i].name == e.Parts[0] {
						if _, _, _, err := resolve(sc, "", e.Parts[0]); err != nil || items[i].e == nil || tree.AsString(items[i].e) == e.Parts[0] || true {
							idx = i
							break
						}
					}
				}
			}
		}
		if idx < 0 {
			x, err := c.compile(o.Expr, sc, datum.Type{})
			if err != nil {
				return nil, err
			}
			if s.Distinct {
				return nil, sqlerr.New(sqlerr.InvalidColumnReference, "for SELECT DISTINCT, ORDER BY expressions must appear in select list")
			}
			idx = len(exprs)
			exprs = append(exprs, x)
			cs = append(cs, col{name: "?sort?", typ: x.t})
		}
		keys = append(keys, sortKey{col: idx, desc: o.Direction == tree.Descending, nullsFirst: nullsFirst(o)})
	}
	ordered := !s.Distinct && len(keys) > 0 && scanOrdered(p, keys, exprs)
	p = &projectNode{in: p, exprs: exprs, cs: cs}
	if s.Distinct {
		p = &distinctNode{in: p}
	}
	if len(keys) > 0 && !ordered {
		p = &sortNode{in: p, keys: keys, keep: nVisible}
	}
	return p, nil
}

// scanOrdered reports whether in, a (filtered) primary-key range scan,
// already yields rows in the order of keys (ascending, on the key columns
// after its equality prefix), so no sort is needed and a LIMIT stops the
// scan early (TPC-C Delivery: the oldest new order of a district).
func scanOrdered(in plan, keys []sortKey, exprs []*expr) bool {
	for {
		f, ok := in.(*filterNode)
		if !ok {
			break
		}
		in = f.in
	}
	sn, ok := in.(*scanNode)
	if !ok || (sn.acc != accRange && sn.acc != accPoint) || len(sn.keyCol) == 0 {
		return false
	}
	rest := sn.keyCol[len(sn.eq):]
	if len(keys) > len(rest) {
		return false
	}
	for i, k := range keys {
		x := exprs[k.col]
		if k.desc || x.col < 0 || x.col != rest[i] || x.col >= len(sn.cs) || x.col != x.minCol || x.col != x.maxCol {
			return false
		}
	}
	return true
}

// addDependentGroups lets the select list use any column of a table whose
// whole primary key is grouped on, as PostgreSQL does (the other columns
// depend functionally on the key): they are added as extra grouping
// columns, which does not change the groups.
func (c *compiler) addDependentGroups(an *aggNode, ref *aggRef, sc *scope) {
	type tableRef struct {
		alias string
		oid   uint32
	}
	grouped := map[tableRef]map[int16]bool{}
	for _, g := range an.groups {
		if g.col < 0 || g.col >= len(sc.cols) || sc.cols[g.col].tableOID == 0 {
			continue
		}
		cc := sc.cols[g.col]
		k := tableRef{cc.table, cc.tableOID}
		if grouped[k] == nil {
			grouped[k] = map[int16]bool{}
		}
		grouped[k][cc.attnum] = true
	}
	if len(grouped) == 0 {
		return
	}
	for k, attrs := range grouped {
		var tbl *catalog.Table
		for _, t := range c.s.eng.Cat.Tables(c.s.changes) {
			if t.OID() == k.oid {
				tbl = t
				break
			}
		}
		if tbl == nil || len(tbl.PK) == 0 {
			continue
		}
		covered := true
		for _, pk := range tbl.PK {
			if !attrs[int16(pk+1)] {
				covered = false
				break
			}
		}
		if !covered {
			continue
		}
		for i, cc := range sc.cols {
			if cc.table != k.alias || cc.tableOID != k.oid || attrs[cc.attnum] {
				continue
			}
			key := cc.table + "." + cc.name
			if _, ok := ref.groups[key]; ok {
				continue
			}
			idx := i
			x := &expr{t: cc.typ, col: idx, minCol: idx, maxCol: idx, fn: func(_ *runCtx, row Row) (datum.Value, error) { return row[idx], nil }}
			ref.groups[key] = len(an.groups)
			if _, ok := ref.groups[cc.name]; !ok {
				ref.groups[cc.name] = len(an.groups)
			}
			an.groups = append(an.groups, x)
			an.cs = append(an.cs, cc)
		}
	}
}

// impliedEqualities returns the WHERE conjuncts plus col = v for every
// column equal to a column that equals a constant or parameter v (a = b
// AND b = $1 gives a = $1), so the scan of a's table can use v as a key
// although b's table comes later in the FROM list (TPC-C's FROM customer,
// warehouse WHERE w_id = $1 AND c_w_id = w_id). The added conjuncts are
// implied by the others, so results do not change.
func impliedEqualities(where []tree.Expr) []tree.Expr {
	out := append([]tree.Expr(nil), where...)
	type pair struct{ a, b *tree.UnresolvedName }
	var links []pair
	consts := map[string]tree.Expr{}
	isConst := func(e tree.Expr) bool {
		switch e.(type) {
		case *tree.Placeholder, *tree.NumVal, *tree.StrVal:
			return true
		}
		return false
	}
	for _, w := range where {
		cmp, ok := w.(*tree.ComparisonExpr)
		if !ok || cmp.Operator != tree.EQ {
			continue
		}
		l, lok := cmp.Left.(*tree.UnresolvedName)
		r, rok := cmp.Right.(*tree.UnresolvedName)
		switch {
		case lok && rok && !l.Star && !r.Star:
			links = append(links, pair{l, r})
		case lok && !l.Star && isConst(cmp.Right):
			consts[tree.AsString(l)] = cmp.Right
		case rok && !r.Star && isConst(cmp.Left):
			consts[tree.AsString(r)] = cmp.Left
		}
	}
	if len(links) == 0 || len(consts) == 0 {
		return out
	}
	for changed := true; changed; {
		changed = false
		for _, p := range links {
			ka, kb := tree.AsString(p.a), tree.AsString(p.b)
			va, aok := consts[ka]
			vb, bok := consts[kb]
			switch {
			case aok && !bok:
				consts[kb] = va
				out = append(out, &tree.ComparisonExpr{Operator: tree.EQ, Left: p.b, Right: va})
				changed = true
			case bok && !aok:
				consts[ka] = vb
				out = append(out, &tree.ComparisonExpr{Operator: tree.EQ, Left: p.a, Right: vb})
				changed = true
			}
		}
	}
	return out
}
