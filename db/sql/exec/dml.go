package exec

import (
	"bytes"
	"fmt"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/parse"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// tableWriter writes rows of one table and its indexes.
type tableWriter struct {
	t   *catalog.Table
	buf []byte
	kb  []byte
}

// prepareRow casts values to the column types and checks NOT NULL.
func (w *tableWriter) prepareRow(row Row) error {
	for i, c := range w.t.Columns {
		if row[i].K == 255 {
			row[i] = datum.Null
		}
		v, err := datum.Cast(row[i], c.Type)
		if err != nil {
			return err
		}
		if v.IsNull() && c.NotNull {
			return &sqlerr.Error{Code: sqlerr.NotNullViolation, Message: fmt.Sprintf("null value in column %q of relation %q violates not-null constraint", c.Name, w.t.Name)}
		}
		row[i] = v
	}
	return nil
}

func (w *tableWriter) key(rc *runCtx, row Row) []byte {
	if len(w.t.PK) == 0 {
		return datum.AppendKey(nil, datum.Int(rc.s.eng.Cat.RowID()))
	}
	return tableKey(nil, w.t, row)
}

func (w *tableWriter) insert(rc *runCtx, row Row, checkUnique bool) error {
	if err := w.prepareRow(row); err != nil {
		return err
	}
	tx := rc.s.tx
	st, err := rc.engineTable(w.t.DataName())
	if err != nil {
		return err
	}
	key := w.key(rc, row)
	if len(w.t.PK) > 0 && checkUnique {
		if err := rc.s.lockRow(w.t.DataName(), key); err != nil {
			return err
		}
		if _, found, err := tx.Get(st, key); err != nil {
			return err
		} else if found {
			return w.uniqueErr(w.t.PKName, w.t.PK, row)
		}
	}
	w.buf = datum.AppendRow(w.buf[:0], row)
	if err := tx.Put(st, key, w.buf); err != nil {
		return err
	}
	for i := range w.t.Indexes {
		if err := w.putIndex(rc, &w.t.Indexes[i], row, key); err != nil {
			return err
		}
	}
	return nil
}

func (w *tableWriter) uniqueErr(name string, cols []int, row Row) error {
	var names, vals []byte
	for i, c := range cols {
		if i > 0 {
			names = append(names, ", "...)
			vals = append(vals, ", "...)
		}
		names = append(names, w.t.Columns[c].Name...)
		vals = append(vals, row[c].String()...)
	}
	return &sqlerr.Error{Code: sqlerr.UniqueViolation, Message: fmt.Sprintf("duplicate key value violates unique constraint %q", name),
		Detail: fmt.Sprintf("Key (%s)=(%s) already exists.", names, vals)}
}

func (w *tableWriter) putIndex(rc *runCtx, ix *catalog.Index, row Row, pk []byte) error {
	xt, err := rc.engineTable(w.t.IndexName(ix))
	if err != nil {
		return err
	}
	prefix := indexKey(nil, ix, row)
	if ix.Unique {
		hasNull := false
		for _, c := range ix.Cols {
			hasNull = hasNull || row[c].IsNull()
		}
		if !hasNull {
			// The value is locked before the check, so two inserts of it
			// cannot both find it free: under read committed nothing else
			// would stop them (their scans are not validated).
			if err := rc.s.lockRow(w.t.IndexName(ix), prefix); err != nil {
				return err
			}
			dup := false
			if err := rc.s.tx.Scan(xt, prefix, datum.PrefixEnd(prefix), func(_, v []byte) bool {
				dup = !bytes.Equal(v, pk)
				return !dup
			}); err != nil {
				return err
			}
			if dup {
				return w.uniqueErr(ix.Name, ix.Cols, row)
			}
		}
	}
	return rc.s.tx.Put(xt, append(prefix, pk...), pk)
}

func (w *tableWriter) delIndex(rc *runCtx, ix *catalog.Index, row Row, pk []byte) error {
	xt, err := rc.engineTable(w.t.IndexName(ix))
	if err != nil {
		return err
	}
	return rc.s.tx.Delete(xt, append(indexKey(nil, ix, row), pk...))
}

func (w *tableWriter) delete(rc *runCtx, key []byte, row Row) error {
	st, err := rc.engineTable(w.t.DataName())
	if err != nil {
		return err
	}
	if err := rc.s.tx.Delete(st, key); err != nil {
		return err
	}
	for i := range w.t.Indexes {
		if err := w.delIndex(rc, &w.t.Indexes[i], row, key); err != nil {
			return err
		}
	}
	return nil
}

func (w *tableWriter) update(rc *runCtx, key []byte, old, row Row) error {
	if err := w.prepareRow(row); err != nil {
		return err
	}
	st, err := rc.engineTable(w.t.DataName())
	if err != nil {
		return err
	}
	newKey := key
	if len(w.t.PK) > 0 {
		newKey = tableKey(nil, w.t, row)
	}
	if !bytes.Equal(newKey, key) {
		if err := w.delete(rc, key, old); err != nil {
			return err
		}
		return w.insert(rc, row, true)
	}
	w.buf = datum.AppendRow(w.buf[:0], row)
	if err := rc.s.tx.Put(st, key, w.buf); err != nil {
		return err
	}
	for i := range w.t.Indexes {
		ix := &w.t.Indexes[i]
		changed := false
		for _, c := range ix.Cols {
			if old[c].IsNull() != row[c].IsNull() || (!old[c].IsNull() && datum.Compare(old[c], row[c]) != 0) {
				changed = true
			}
		}
		if !changed {
			continue
		}
		if err := w.delIndex(rc, ix, old, key); err != nil {
			return err
		}
		if err := w.putIndex(rc, ix, row, key); err != nil {
			return err
		}
	}
	return nil
}

// ---- INSERT ----

type insertPlan struct {
	w         *tableWriter
	src       plan
	targets   []int   // column index for each source column
	defaults  []*expr // per table column, for columns not targeted
	returning *projection
	doNothing bool
}

type projection struct {
	exprs []*expr
	cs    []col
}

func (p *insertPlan) columns() []col {
	if p.returning == nil {
		return nil
	}
	return p.returning.cs
}

func (p *insertPlan) exec(rc *runCtx) (*Result, error) {
	res := &Result{Columns: toColumns(p.columns())}
	n := 0
	err := p.src.run(rc, func(src Row) error {
		row := make(Row, len(p.w.t.Columns))
		set := make([]bool, len(row))
		for i, ci := range p.targets {
			row[ci] = src[i]
			set[ci] = src[i].K != 255
		}
		for i, d := range p.defaults {
			if !set[i] && d != nil {
				v, err := d.fn(rc, nil)
				if err != nil {
					return err
				}
				row[i] = v
			}
		}
		if err := p.w.insert(rc, row, true); err != nil {
			if p.doNothing && sqlerr.Code(err) == sqlerr.UniqueViolation {
				return nil
			}
			return err
		}
		n++
		if p.returning != nil {
			out, err := p.returning.eval(rc, row)
			if err != nil {
				return err
			}
			res.Rows = append(res.Rows, out)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Tag = fmt.Sprintf("INSERT 0 %d", n)
	return res, nil
}

func (p *projection) eval(rc *runCtx, row Row) (Row, error) {
	out := make(Row, len(p.exprs))
	for i, e := range p.exprs {
		v, err := e.fn(rc, row)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func targetTable(c *compiler, te tree.TableExpr) (*catalog.Table, string, error) {
	alias := ""
	if a, ok := te.(*tree.AliasedTableExpr); ok {
		alias = string(a.As.Alias)
		te = a.Expr
	}
	tn, ok := te.(*tree.TableName)
	if !ok {
		return nil, "", sqlerr.New(sqlerr.FeatureNotSupported, "target %s is not supported", tree.AsString(te))
	}
	t := c.s.lookupTable(string(tn.TableName))
	if t == nil {
		return nil, "", sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", string(tn.TableName))
	}
	if alias == "" {
		alias = t.Name
	}
	return t, alias, nil
}

func tableScope(t *catalog.Table, alias string) *scope {
	cs := make([]col, len(t.Columns))
	for i, cc := range t.Columns {
		cs[i] = col{name: cc.Name, table: alias, typ: cc.Type, tableOID: t.OID(), attnum: int16(i + 1)}
	}
	return &scope{cols: cs}
}

func (c *compiler) returning(r tree.ReturningClause, sc *scope) (*projection, error) {
	re, ok := r.(*tree.ReturningExprs)
	if !ok || re == nil {
		return nil, nil
	}
	items, err := c.expandSelect(tree.SelectExprs(*re), sc)
	if err != nil {
		return nil, err
	}
	p := &projection{}
	for _, it := range items {
		var x *expr
		if it.star >= 0 {
			cc := sc.cols[it.star]
			x, err = c.compileColumn(sc, cc.table, cc.name)
		} else {
			x, err = c.compile(it.e, sc, datum.Type{})
		}
		if err != nil {
			return nil, err
		}
		p.exprs = append(p.exprs, x)
		p.cs = append(p.cs, col{name: it.name, typ: x.t})
	}
	return p, nil
}

func (c *compiler) defaultExprs(t *catalog.Table) ([]*expr, error) {
	out := make([]*expr, len(t.Columns))
	for i, cc := range t.Columns {
		if cc.Default == "" {
			continue
		}
		var ps parse.Parser
		st, err := ps.ParseOne("SELECT " + cc.Default)
		if err != nil {
			return nil, fmt.Errorf("exec: default of %s.%s: %w", t.Name, cc.Name, err)
		}
		sel := st.AST.(*tree.Select).Select.(*tree.SelectClause)
		x, err := c.compile(sel.Exprs[0].Expr, &scope{}, cc.Type)
		if err != nil {
			return nil, err
		}
		out[i] = x
	}
	return out, nil
}

func (c *compiler) planInsert(n *tree.Insert) (stmtPlan, error) {
	if n.With != nil {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "WITH is not supported")
	}
	t, alias, err := targetTable(c, n.Table)
	if err != nil {
		return nil, err
	}
	p := &insertPlan{w: &tableWriter{t: t}}
	if n.OnConflict != nil {
		if !n.OnConflict.DoNothing {
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "ON CONFLICT DO UPDATE is not supported")
		}
		p.doNothing = true
	}
	if len(n.Columns) == 0 {
		for i := range t.Columns {
			p.targets = append(p.targets, i)
		}
	} else {
		for _, cn := range n.Columns {
			i := t.ColumnIndex(string(cn))
			if i < 0 {
				return nil, sqlerr.New(sqlerr.UndefinedColumn, "column %q of relation %q does not exist", string(cn), t.Name)
			}
			p.targets = append(p.targets, i)
		}
	}
	want := make([]datum.Type, len(p.targets))
	for i, ci := range p.targets {
		want[i] = t.Columns[ci].Type
	}
	if n.Rows == nil || n.Rows.Select == nil {
		// DEFAULT VALUES
		p.src = &valuesNode{rows: [][]*expr{{}}}
		p.targets = nil
	} else if v, ok := n.Rows.Select.(*tree.ValuesClause); ok && n.Rows.OrderBy == nil && n.Rows.Limit == nil {
		src, err := c.planValues(v, nil, want)
		if err != nil {
			return nil, err
		}
		p.src = src
	} else {
		src, err := c.planSelectStmt(n.Rows, nil)
		if err != nil {
			return nil, err
		}
		p.src = src
	}
	if p.targets != nil && len(p.src.cols()) != len(p.targets) {
		if len(p.src.cols()) > len(p.targets) {
			return nil, sqlerr.New(sqlerr.SyntaxError, "INSERT has more expressions than target columns")
		}
		p.targets = p.targets[:len(p.src.cols())]
	}
	if p.defaults, err = c.defaultExprs(t); err != nil {
		return nil, err
	}
	if p.returning, err = c.returning(n.Returning, tableScope(t, alias)); err != nil {
		return nil, err
	}
	return p, nil
}

// ---- UPDATE / DELETE ----

type modifyPlan struct {
	w         *tableWriter
	scan      *scanNode
	sets      []int
	setExprs  []*expr
	delete    bool
	returning *projection
}

func (p *modifyPlan) columns() []col {
	if p.returning == nil {
		return nil
	}
	return p.returning.cs
}

func (p *modifyPlan) exec(rc *runCtx) (*Result, error) {
	type hit struct {
		key []byte
		row Row
	}
	var hits []hit
	if err := p.scan.each(rc, func(key []byte, row Row) error {
		hits = append(hits, hit{append([]byte(nil), key...), row})
		return nil
	}); err != nil {
		return nil, err
	}
	res := &Result{Columns: toColumns(p.columns())}
	for _, h := range hits {
		out := h.row
		if p.delete {
			if err := p.w.delete(rc, h.key, h.row); err != nil {
				return nil, err
			}
		} else {
			nr := append(Row(nil), h.row...)
			for i, ci := range p.sets {
				v, err := p.setExprs[i].fn(rc, h.row)
				if err != nil {
					return nil, err
				}
				if v.K == 255 {
					v = datum.Null
				}
				nr[ci] = v
			}
			if err := p.w.update(rc, h.key, h.row, nr); err != nil {
				return nil, err
			}
			out = nr
		}
		if p.returning != nil {
			r, err := p.returning.eval(rc, out)
			if err != nil {
				return nil, err
			}
			res.Rows = append(res.Rows, r)
		}
	}
	verb := "UPDATE"
	if p.delete {
		verb = "DELETE"
	}
	res.Tag = fmt.Sprintf("%s %d", verb, len(hits))
	return res, nil
}

func (c *compiler) planModify(te tree.TableExpr, where *tree.Where, ret tree.ReturningClause) (*modifyPlan, *scope, error) {
	t, alias, err := targetTable(c, te)
	if err != nil {
		return nil, nil, err
	}
	sc := tableScope(t, alias)
	var conds []tree.Expr
	if where != nil {
		conds = conjuncts(where.Expr, nil)
	}
	sn, err := c.planScan(t, sc, conds)
	if err != nil {
		return nil, nil, err
	}
	sn.lock = true
	p := &modifyPlan{w: &tableWriter{t: t}, scan: sn}
	if p.returning, err = c.returning(ret, sc); err != nil {
		return nil, nil, err
	}
	return p, sc, nil
}

func (c *compiler) planUpdate(n *tree.Update) (stmtPlan, error) {
	if n.With != nil || len(n.From) > 0 {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "UPDATE with WITH or FROM is not supported")
	}
	p, sc, err := c.planModify(n.Table, n.Where, n.Returning)
	if err != nil {
		return nil, err
	}
	t := p.w.t
	for _, ue := range n.Exprs {
		if ue.Tuple {
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "multiple-column UPDATE SET is not supported")
		}
		name := string(ue.Names[0])
		ci := t.ColumnIndex(name)
		if ci < 0 {
			return nil, sqlerr.New(sqlerr.UndefinedColumn, "column %q of relation %q does not exist", name, t.Name)
		}
		var x *expr
		if _, ok := ue.Expr.(tree.DefaultVal); ok {
			defs, err := c.defaultExprs(t)
			if err != nil {
				return nil, err
			}
			x = defs[ci]
			if x == nil {
				x = constExpr(datum.Null, t.Columns[ci].Type)
			}
		} else if x, err = c.compile(ue.Expr, sc, t.Columns[ci].Type); err != nil {
			return nil, err
		}
		p.sets = append(p.sets, ci)
		p.setExprs = append(p.setExprs, x)
	}
	return p, nil
}

func (c *compiler) planDelete(n *tree.Delete) (stmtPlan, error) {
	if n.With != nil {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "WITH is not supported")
	}
	p, _, err := c.planModify(n.Table, n.Where, n.Returning)
	if err != nil {
		return nil, err
	}
	p.delete = true
	return p, nil
}
