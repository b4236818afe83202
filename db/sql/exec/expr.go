package exec

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"
	"github.com/auxten/postgresql-parser/pkg/sql/types"
	"github.com/cockroachdb/apd"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// Row is one row of values.
type Row = []datum.Value

// col is an output column of a plan node.
type col struct {
	name     string
	table    string // alias or table name for qualified references
	typ      datum.Type
	tableOID uint32
	attnum   int16
}

// scope resolves column names: the columns of the current row, and the
// enclosing query's scope for correlated subqueries.
type scope struct {
	cols   []col
	parent *scope
}

// runCtx is the state of one statement execution.
type runCtx struct {
	s      *Session
	params []datum.Value
	outer  []Row // rows of enclosing scopes, innermost last
	now    int64
	// cache holds results of uncorrelated subqueries for this execution.
	cache map[*int]any
}

func (rc *runCtx) cached(key *int) (any, bool) {
	v, ok := rc.cache[key]
	return v, ok
}

func (rc *runCtx) store(key *int, v any) {
	if rc.cache == nil {
		rc.cache = map[*int]any{}
	}
	rc.cache[key] = v
}

type evalFn func(rc *runCtx, row Row) (datum.Value, error)

// expr is a compiled expression.
type expr struct {
	t    datum.Type
	fn   evalFn
	col  int // >= 0: a plain reference to column col of the current row
	cnst bool
	val  datum.Value // when cnst
	// minCol/maxCol bound the current-row columns referenced (-1: none).
	minCol, maxCol int
}

func constExpr(v datum.Value, t datum.Type) *expr {
	return &expr{t: t, cnst: true, val: v, col: -1, minCol: -1, maxCol: -1,
		fn: func(*runCtx, Row) (datum.Value, error) { return v, nil }}
}

func (e *expr) rowFree() bool { return e.minCol < 0 }

// aggRef maps aggregate calls and grouping expressions to the columns of
// an aggregation's output when compiling the expressions above it.
type aggRef struct {
	groups map[string]int
	aggs   map[string]int
	inner  *scope // the scope below the aggregation (for error messages)
}

// compiler compiles AST expressions.
type compiler struct {
	s      *Session
	params []datum.Type // inferred parameter types (OID 0: unknown yet)
	agg    *aggRef
	// aggCalls collects aggregate calls found while scanning (collect mode).
}

func (c *compiler) param(i int, want datum.Type) datum.Type {
	for len(c.params) <= i {
		c.params = append(c.params, datum.Type{})
	}
	if c.params[i].OID == 0 && want.OID != 0 && want.OID != datum.OIDUnknown {
		c.params[i] = want
	}
	if c.params[i].OID == 0 {
		return datum.TUnknown
	}
	return c.params[i]
}

func combineRefs(es ...*expr) (int, int) {
	lo, hi := -1, -1
	for _, e := range es {
		if e == nil || e.minCol < 0 {
			continue
		}
		if lo < 0 || e.minCol < lo {
			lo = e.minCol
		}
		if e.maxCol > hi {
			hi = e.maxCol
		}
	}
	return lo, hi
}

func mk(t datum.Type, fn evalFn, deps ...*expr) *expr {
	lo, hi := combineRefs(deps...)
	return &expr{t: t, fn: fn, col: -1, minCol: lo, maxCol: hi}
}

// typeFromAST maps a parser type to a CumulusDB type.
func typeFromAST(t *types.T) (datum.Type, error) {
	switch t.Family() {
	case types.BoolFamily:
		return datum.TBool, nil
	case types.IntFamily:
		switch t.Width() {
		case 16:
			return datum.TInt2, nil
		case 32:
			return datum.TInt4, nil
		}
		return datum.TInt8, nil
	case types.FloatFamily:
		if t.Width() == 32 {
			return datum.TFloat4, nil
		}
		return datum.TFloat8, nil
	case types.DecimalFamily:
		if t.Precision() > 0 {
			return datum.Type{OID: datum.OIDNumeric, Typmod: (t.Precision()<<16 | t.Scale()) + 4}, nil
		}
		return datum.TNumeric, nil
	case types.StringFamily, types.CollatedStringFamily:
		switch t.Oid() {
		case datum.OIDVarchar:
			if t.Width() > 0 {
				return datum.Type{OID: datum.OIDVarchar, Typmod: t.Width() + 4}, nil
			}
			return datum.Type{OID: datum.OIDVarchar, Typmod: -1}, nil
		case datum.OIDBPChar:
			w := t.Width()
			if w <= 0 {
				w = 1
			}
			return datum.Type{OID: datum.OIDBPChar, Typmod: w + 4}, nil
		case datum.OIDName:
			return datum.TName, nil
		case datum.OIDChar:
			return datum.Type{OID: datum.OIDChar, Typmod: -1}, nil
		}
		return datum.TText, nil
	case types.DateFamily:
		return datum.TDate, nil
	case types.TimestampFamily:
		return datum.TTimestamp, nil
	case types.TimestampTZFamily:
		return datum.Type{OID: datum.OIDTimestampTZ, Typmod: -1}, nil
	case types.BytesFamily:
		return datum.Type{OID: datum.OIDBytea, Typmod: -1}, nil
	case types.OidFamily:
		switch t.Oid() {
		case datum.OIDRegclass:
			return datum.Type{OID: datum.OIDRegclass, Typmod: -1}, nil
		case datum.OIDRegtype:
			return datum.Type{OID: datum.OIDRegtype, Typmod: -1}, nil
		}
		return datum.TOid, nil
	case types.ArrayFamily:
		return datum.Type{OID: datum.OIDTextArray, Typmod: -1}, nil
	}
	return datum.Type{}, sqlerr.New(sqlerr.FeatureNotSupported, "type %s is not supported", t.SQLString())
}

// resolve finds a column by (table, name) in sc and its parents.
func resolve(sc *scope, table, name string) (depth, idx int, c col, err error) {
	for d := 0; sc != nil; d, sc = d+1, sc.parent {
		found := -1
		for i, cc := range sc.cols {
			if cc.name == name && (table == "" || cc.table == table) {
				if found >= 0 {
					return 0, 0, col{}, sqlerr.New(sqlerr.AmbiguousColumn, "column reference %q is ambiguous", name)
				}
				found = i
			}
		}
		if found >= 0 {
			return d, found, sc.cols[found], nil
		}
	}
	if table != "" {
		return 0, 0, col{}, sqlerr.New(sqlerr.UndefinedColumn, "column %s.%s does not exist", table, name)
	}
	return 0, 0, col{}, sqlerr.New(sqlerr.UndefinedColumn, "column %q does not exist", name)
}

func nameParts(n *tree.UnresolvedName) (table, column string) {
	column = n.Parts[0]
	if n.NumParts > 1 {
		table = n.Parts[1]
	}
	return
}

func (c *compiler) compileColumn(sc *scope, table, name string) (*expr, error) {
	d, idx, cc, err := resolve(sc, table, name)
	if err != nil {
		return nil, err
	}
	if d == 0 {
		i := idx
		return &expr{t: cc.typ, col: i, minCol: i, maxCol: i, fn: func(_ *runCtx, row Row) (datum.Value, error) {
			return row[i], nil
		}}, nil
	}
	depth := d
	return &expr{t: cc.typ, col: -1, minCol: -1, maxCol: -1, fn: func(rc *runCtx, _ Row) (datum.Value, error) {
		return rc.outer[len(rc.outer)-depth][idx], nil
	}}, nil
}

// compile compiles e in scope sc; want is a type hint for literals and
// parameters (zero: none).
func (c *compiler) compile(e tree.Expr, sc *scope, want datum.Type) (*expr, error) {
	if c.agg != nil {
		key := tree.AsString(e)
		if i, ok := c.agg.groups[key]; ok {
			return c.compileColumn(sc, sc.cols[i].table, sc.cols[i].name)
		}
		if i, ok := c.agg.aggs[key]; ok {
			ii := i
			return &expr{t: sc.cols[i].typ, col: ii, minCol: ii, maxCol: ii, fn: func(_ *runCtx, row Row) (datum.Value, error) { return row[ii], nil }}, nil
		}
	}
	switch n := e.(type) {
	case *tree.ParenExpr:
		return c.compile(n.Expr, sc, want)
	case *tree.UnresolvedName:
		if n.Star {
			return nil, sqlerr.New(sqlerr.SyntaxError, "unexpected *")
		}
		table, name := nameParts(n)
		if c.agg != nil {
			if d, _, _, err := resolve(sc, table, name); err != nil || d > 0 {
				if _, _, _, err := resolve(c.agg.inner, table, name); err == nil {
					return nil, sqlerr.New(sqlerr.GroupingError, "column %q must appear in the GROUP BY clause or be used in an aggregate function", name)
				}
			}
		}
		ex, err := c.compileColumn(sc, table, name)
		if err != nil && table == "" {
			// Niladic functions spelled as names.
			switch name {
			case "current_user", "session_user", "user", "current_role":
				return constExpr(datum.Text("cumulus"), datum.TName), nil
			case "current_catalog":
				return constExpr(datum.Text("cumulus"), datum.TName), nil
			case "current_schema":
				return constExpr(datum.Text("public"), datum.TName), nil
			}
		}
		return ex, err
	case *tree.ColumnItem:
		table := ""
		if n.TableName != nil {
			table = n.TableName.Parts[0]
		}
		return c.compileColumn(sc, table, string(n.ColumnName))
	case *tree.Placeholder:
		i := int(n.Idx)
		t := c.param(i, want)
		return &expr{t: t, col: -1, minCol: -1, maxCol: -1, fn: func(rc *runCtx, _ Row) (datum.Value, error) {
			if i >= len(rc.params) {
				return datum.Null, sqlerr.New(sqlerr.UndefinedParameter, "there is no parameter $%d", i+1)
			}
			return rc.params[i], nil
		}}, nil
	case *tree.NumVal:
		return numConst(n, want)
	case *tree.StrVal:
		s := n.RawString()
		if want.OID != 0 && want.OID != datum.OIDUnknown && want.Kind() != datum.KText {
			if want.OID == datum.OIDRegclass {
				return c.regclass(s)
			}
			v, err := datum.FromText(s, datum.Type{OID: want.OID, Typmod: -1})
			if err != nil {
				return nil, err
			}
			return constExpr(v, datum.Type{OID: want.OID, Typmod: -1}), nil
		}
		return constExpr(datum.Text(s), datum.TText), nil
	case *tree.DBool:
		return constExpr(datum.Bool(bool(*n)), datum.TBool), nil
	case *tree.DInt:
		return constExpr(datum.Int(int64(*n)), datum.TInt8), nil
	case *tree.DString:
		return constExpr(datum.Text(string(*n)), datum.TText), nil
	case tree.Datum:
		if n == tree.DNull {
			t := want
			if t.OID == 0 {
				t = datum.TText
			}
			return constExpr(datum.Null, t), nil
		}
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "constant %s is not supported", tree.AsString(n))
	case *tree.AndExpr:
		return c.logic(n.Left, n.Right, sc, true)
	case *tree.OrExpr:
		return c.logic(n.Left, n.Right, sc, false)
	case *tree.NotExpr:
		x, err := c.compile(n.Expr, sc, datum.TBool)
		if err != nil {
			return nil, err
		}
		return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
			v, err := x.fn(rc, row)
			if err != nil || v.IsNull() {
				return datum.Null, err
			}
			return datum.Bool(!v.True()), nil
		}, x), nil
	case *tree.ComparisonExpr:
		return c.comparison(n, sc)
	case *tree.RangeCond:
		return c.between(n, sc)
	case *tree.BinaryExpr:
		return c.binary(n, sc, want)
	case *tree.UnaryExpr:
		x, err := c.compile(n.Expr, sc, want)
		if err != nil {
			return nil, err
		}
		if n.Operator != tree.UnaryMinus {
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "operator %s is not supported", n.Operator)
		}
		if x.cnst {
			v, err := negate(x.val)
			if err != nil {
				return nil, err
			}
			return constExpr(v, x.t), nil
		}
		return mk(x.t, func(rc *runCtx, row Row) (datum.Value, error) {
			v, err := x.fn(rc, row)
			if err != nil {
				return v, err
			}
			return negate(v)
		}, x), nil
	case *tree.CastExpr:
		t, err := typeFromAST(n.Type)
		if err != nil {
			return nil, err
		}
		return c.cast(n.Expr, sc, t)
	case *tree.AnnotateTypeExpr:
		t, err := typeFromAST(n.Type)
		if err != nil {
			return nil, err
		}
		return c.cast(n.Expr, sc, t)
	case *tree.CollateExpr:
		return c.compile(n.Expr, sc, want)
	case *tree.CaseExpr:
		return c.caseExpr(n, sc, want)
	case *tree.CoalesceExpr:
		return c.coalesce(n.Exprs, sc, want, strings.EqualFold(n.Name, "greatest"), strings.EqualFold(n.Name, "least"))
	case *tree.NullIfExpr:
		a, err := c.compile(n.Expr1, sc, want)
		if err != nil {
			return nil, err
		}
		b, err := c.compile(n.Expr2, sc, a.t)
		if err != nil {
			return nil, err
		}
		return mk(a.t, func(rc *runCtx, row Row) (datum.Value, error) {
			x, err := a.fn(rc, row)
			if err != nil || x.IsNull() {
				return x, err
			}
			y, err := b.fn(rc, row)
			if err != nil {
				return x, err
			}
			if !y.IsNull() && datum.Compare(x, y) == 0 {
				return datum.Null, nil
			}
			return x, nil
		}, a, b), nil
	case *tree.FuncExpr:
		return c.function(n, sc, want)
	case *tree.Subquery:
		return c.subquery(n, sc)
	case *tree.Tuple:
		if len(n.Exprs) == 1 {
			return c.compile(n.Exprs[0], sc, want)
		}
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "row values are not supported here")
	case *tree.Array:
		// Arrays appear only in catalog queries; render as text.
		parts := make([]*expr, len(n.Exprs))
		for i, x := range n.Exprs {
			p, err := c.compile(x, sc, datum.Type{})
			if err != nil {
				return nil, err
			}
			parts[i] = p
		}
		return mk(datum.Type{OID: datum.OIDTextArray, Typmod: -1}, func(rc *runCtx, row Row) (datum.Value, error) {
			var b strings.Builder
			b.WriteByte('{')
			for i, p := range parts {
				v, err := p.fn(rc, row)
				if err != nil {
					return v, err
				}
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(v.String())
			}
			b.WriteByte('}')
			return datum.Text(b.String()), nil
		}, parts...), nil
	case *tree.ArrayFlatten:
		sub, ok := n.Subquery.(*tree.Subquery)
		if !ok {
			return nil, sqlerr.New(sqlerr.FeatureNotSupported, "ARRAY(%s) is not supported", tree.AsString(n.Subquery))
		}
		p, _, err := c.planSubquery(sub.Select, sc)
		if err != nil {
			return nil, err
		}
		return mk(datum.Type{OID: datum.OIDTextArray, Typmod: -1}, func(rc *runCtx, row Row) (datum.Value, error) {
			var parts []string
			rc.outer = append(rc.outer, row)
			err := p.run(rc, func(r Row) error { parts = append(parts, r[0].String()); return nil })
			rc.outer = rc.outer[:len(rc.outer)-1]
			if err != nil {
				return datum.Null, err
			}
			return datum.Text("{" + strings.Join(parts, ",") + "}"), nil
		}), nil
	case *tree.IsOfTypeExpr:
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "IS OF is not supported")
	}
	return nil, sqlerr.New(sqlerr.FeatureNotSupported, "expression %s is not supported", tree.AsString(e))
}

func numConst(n *tree.NumVal, want datum.Type) (*expr, error) {
	s := n.String()
	if want.OID != 0 {
		switch want.Kind() {
		case datum.KFloat:
			f, err := strconv.ParseFloat(s, 64)
			if err == nil {
				return constExpr(datum.Float(f), want), nil
			}
		case datum.KNumeric:
			d, err := datum.ParseNumeric(s)
			if err == nil {
				return constExpr(datum.Numeric(d), datum.TNumeric), nil
			}
		}
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		if i >= math.MinInt32 && i <= math.MaxInt32 {
			return constExpr(datum.Int(i), datum.TInt4), nil
		}
		return constExpr(datum.Int(i), datum.TInt8), nil
	}
	if strings.ContainsAny(s, "eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, sqlerr.New(sqlerr.InvalidText, "invalid number %q", s)
		}
		return constExpr(datum.Float(f), datum.TFloat8), nil
	}
	d, err := datum.ParseNumeric(s)
	if err != nil {
		return nil, err
	}
	return constExpr(datum.Numeric(d), datum.TNumeric), nil
}

func negate(v datum.Value) (datum.Value, error) {
	switch v.K {
	case datum.KNull:
		return v, nil
	case datum.KInt:
		if v.I == math.MinInt64 {
			return datum.Null, sqlerr.New(sqlerr.NumericOutOfRange, "bigint out of range")
		}
		return datum.Int(-v.I), nil
	case datum.KFloat:
		return datum.Float(-v.F), nil
	case datum.KNumeric:
		return datum.Numeric(new(apd.Decimal).Neg(v.D)), nil
	}
	return datum.Null, sqlerr.New(sqlerr.UndefinedFunction, "operator does not exist: - %s", v.KindName())
}

func (c *compiler) regclass(name string) (*expr, error) {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "public."), "pg_catalog.")
	name = strings.Trim(name, `"`)
	if oid, err := strconv.ParseInt(name, 10, 64); err == nil {
		return constExpr(datum.Int(oid), datum.Type{OID: datum.OIDRegclass, Typmod: -1}), nil
	}
	if t := c.s.lookupTable(name); t != nil {
		return constExpr(datum.Int(int64(t.OID())), datum.Type{OID: datum.OIDRegclass, Typmod: -1}), nil
	}
	if oid, ok := virtualOID(name); ok {
		return constExpr(datum.Int(int64(oid)), datum.Type{OID: datum.OIDRegclass, Typmod: -1}), nil
	}
	return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", name)
}

func (c *compiler) cast(e tree.Expr, sc *scope, t datum.Type) (*expr, error) {
	if s, ok := e.(*tree.StrVal); ok && t.OID == datum.OIDRegclass {
		return c.regclass(s.RawString())
	}
	x, err := c.compile(e, sc, t)
	if err != nil {
		return nil, err
	}
	if t.OID == datum.OIDRegclass && x.t.Kind() == datum.KText {
		return mk(t, func(rc *runCtx, row Row) (datum.Value, error) {
			v, err := x.fn(rc, row)
			if err != nil || v.IsNull() {
				return v, err
			}
			r, err := c.regclass(v.S)
			if err != nil {
				return datum.Null, err
			}
			return r.val, nil
		}, x), nil
	}
	if x.cnst {
		v, err := datum.Cast(x.val, t)
		if err != nil {
			return nil, err
		}
		return constExpr(v, t), nil
	}
	return mk(t, func(rc *runCtx, row Row) (datum.Value, error) {
		v, err := x.fn(rc, row)
		if err != nil {
			return v, err
		}
		return datum.Cast(v, t)
	}, x), nil
}

func (c *compiler) logic(l, r tree.Expr, sc *scope, and bool) (*expr, error) {
	a, err := c.compile(l, sc, datum.TBool)
	if err != nil {
		return nil, err
	}
	b, err := c.compile(r, sc, datum.TBool)
	if err != nil {
		return nil, err
	}
	return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
		x, err := a.fn(rc, row)
		if err != nil {
			return x, err
		}
		if !x.IsNull() && x.True() != and {
			return datum.Bool(!and), nil // short circuit
		}
		y, err := b.fn(rc, row)
		if err != nil {
			return y, err
		}
		if !y.IsNull() && y.True() != and {
			return datum.Bool(!and), nil
		}
		if x.IsNull() || y.IsNull() {
			return datum.Null, nil
		}
		return datum.Bool(and), nil
	}, a, b), nil
}

// compilePair compiles two operands, typing a parameter or literal on one
// side from the other.
func (c *compiler) compilePair(l, r tree.Expr, sc *scope) (*expr, *expr, error) {
	if isUntyped(l) && !isUntyped(r) {
		b, err := c.compile(r, sc, datum.Type{})
		if err != nil {
			return nil, nil, err
		}
		a, err := c.compile(l, sc, b.t)
		return a, b, err
	}
	a, err := c.compile(l, sc, datum.Type{})
	if err != nil {
		return nil, nil, err
	}
	b, err := c.compile(r, sc, a.t)
	return a, b, err
}

// binaryOperands compiles the operands of a binary operator. When both
// are untyped (a parameter and a number, as in SET n = $1 + 1), the
// parameter takes the type the context wants if it is numeric, else the
// number's type, as PostgreSQL resolves unknown + integer to integer;
// otherwise the typed side decides (compilePair).
func (c *compiler) binaryOperands(n *tree.BinaryExpr, sc *scope, want datum.Type) (*expr, *expr, error) {
	_, lp := n.Left.(*tree.Placeholder)
	_, rp := n.Right.(*tree.Placeholder)
	if n.Operator == tree.Concat || !(lp || rp) || !isUntyped(n.Left) || !isUntyped(n.Right) {
		return c.compilePair(n.Left, n.Right, sc)
	}
	hint := datum.Type{}
	switch want.Kind() {
	case datum.KInt, datum.KNumeric, datum.KFloat:
		if want.OID != datum.OIDUnknown {
			hint = want
		}
	}
	first, second := n.Left, n.Right
	if lp && !rp {
		first, second = n.Right, n.Left // the number first: its type guides the parameter
	}
	x, err := c.compile(first, sc, hint)
	if err != nil {
		return nil, nil, err
	}
	h := hint
	if h.OID == 0 {
		h = x.t
	}
	y, err := c.compile(second, sc, h)
	if err != nil {
		return nil, nil, err
	}
	if first == n.Left {
		return x, y, nil
	}
	return y, x, nil
}

func isUntyped(e tree.Expr) bool {
	switch e.(type) {
	case *tree.Placeholder, *tree.StrVal, *tree.NumVal:
		return true
	}
	return e == tree.DNull
}

func cmpResult(op tree.ComparisonOperator, c int) bool {
	switch op {
	case tree.EQ:
		return c == 0
	case tree.NE:
		return c != 0
	case tree.LT:
		return c < 0
	case tree.LE:
		return c <= 0
	case tree.GT:
		return c > 0
	case tree.GE:
		return c >= 0
	}
	return false
}

func (c *compiler) comparison(n *tree.ComparisonExpr, sc *scope) (*expr, error) {
	switch n.Operator {
	case tree.In, tree.NotIn:
		return c.inExpr(n, sc)
	case tree.Any, tree.Some, tree.All:
		return c.anyAll(n, sc)
	}
	a, b, err := c.compilePair(n.Left, n.Right, sc)
	if err != nil {
		return nil, err
	}
	op := n.Operator
	switch op {
	case tree.EQ, tree.NE, tree.LT, tree.LE, tree.GT, tree.GE:
		if err := comparable(a.t, b.t); err != nil {
			return nil, err
		}
		return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
			x, err := a.fn(rc, row)
			if err != nil || x.IsNull() {
				return datum.Null, err
			}
			y, err := b.fn(rc, row)
			if err != nil || y.IsNull() {
				return datum.Null, err
			}
			return datum.Bool(cmpResult(op, datum.Compare(x, y))), nil
		}, a, b), nil
	case tree.IsDistinctFrom, tree.IsNotDistinctFrom:
		distinct := op == tree.IsDistinctFrom
		return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
			x, err := a.fn(rc, row)
			if err != nil {
				return x, err
			}
			y, err := b.fn(rc, row)
			if err != nil {
				return y, err
			}
			var same bool
			switch {
			case x.IsNull() && y.IsNull():
				same = true
			case x.IsNull() || y.IsNull():
				same = false
			default:
				same = datum.Compare(x, y) == 0
			}
			return datum.Bool(same != distinct), nil
		}, a, b), nil
	case tree.Like, tree.NotLike, tree.ILike, tree.NotILike, tree.RegMatch, tree.NotRegMatch, tree.RegIMatch, tree.NotRegIMatch, tree.SimilarTo, tree.NotSimilarTo:
		neg := op == tree.NotLike || op == tree.NotILike || op == tree.NotRegMatch || op == tree.NotRegIMatch || op == tree.NotSimilarTo
		fold := op == tree.ILike || op == tree.NotILike || op == tree.RegIMatch || op == tree.NotRegIMatch
		like := op == tree.Like || op == tree.NotLike || op == tree.ILike || op == tree.NotILike
		similar := op == tree.SimilarTo || op == tree.NotSimilarTo
		toRE := func(p string) (*regexp.Regexp, error) {
			src := p
			switch {
			case like:
				src = likeToRegexp(p)
			case similar:
				src = "^(?:" + strings.NewReplacer("%", ".*", "_", ".").Replace(p) + ")$"
			}
			if fold {
				src = "(?i)" + src
			}
			re, err := regexp.Compile(src)
			if err != nil {
				return nil, sqlerr.New(sqlerr.InvalidParameterValue, "invalid regular expression %q: %v", p, err)
			}
			return re, nil
		}
		var fixed *regexp.Regexp
		if b.cnst && !b.val.IsNull() {
			re, err := toRE(b.val.String())
			if err != nil {
				return nil, err
			}
			fixed = re
		}
		return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
			x, err := a.fn(rc, row)
			if err != nil || x.IsNull() {
				return datum.Null, err
			}
			re := fixed
			if re == nil {
				y, err := b.fn(rc, row)
				if err != nil || y.IsNull() {
					return datum.Null, err
				}
				if re, err = toRE(y.String()); err != nil {
					return datum.Null, err
				}
			}
			return datum.Bool(re.MatchString(x.String()) != neg), nil
		}, a, b), nil
	}
	return nil, sqlerr.New(sqlerr.FeatureNotSupported, "operator %s is not supported", op)
}

func comparable(a, b datum.Type) error {
	ka, kb := a.Kind(), b.Kind()
	if ka == kb || a.OID == datum.OIDUnknown || b.OID == datum.OIDUnknown {
		return nil
	}
	num := func(k datum.Kind) bool { return k == datum.KInt || k == datum.KFloat || k == datum.KNumeric }
	if num(ka) && num(kb) {
		return nil
	}
	if (ka == datum.KDate || ka == datum.KTimestamp) && (kb == datum.KDate || kb == datum.KTimestamp) {
		return nil
	}
	return sqlerr.New(sqlerr.UndefinedFunction, "operator does not exist: %s = %s", a.Name(), b.Name())
}

func likeToRegexp(p string) string {
	var b strings.Builder
	b.WriteString("^(?s:")
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%':
			b.WriteString(".*")
		case '_':
			b.WriteString(".")
		case '\\':
			if i+1 < len(p) {
				i++
				b.WriteString(regexp.QuoteMeta(p[i : i+1]))
			}
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	b.WriteString(")$")
	return b.String()
}

func (c *compiler) between(n *tree.RangeCond, sc *scope) (*expr, error) {
	x, err := c.compile(n.Left, sc, datum.Type{})
	if err != nil {
		return nil, err
	}
	lo, err := c.compile(n.From, sc, x.t)
	if err != nil {
		return nil, err
	}
	hi, err := c.compile(n.To, sc, x.t)
	if err != nil {
		return nil, err
	}
	not, sym := n.Not, n.Symmetric
	return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
		v, err := x.fn(rc, row)
		if err != nil || v.IsNull() {
			return datum.Null, err
		}
		a, err := lo.fn(rc, row)
		if err != nil || a.IsNull() {
			return datum.Null, err
		}
		b, err := hi.fn(rc, row)
		if err != nil || b.IsNull() {
			return datum.Null, err
		}
		if sym && datum.Compare(a, b) > 0 {
			a, b = b, a
		}
		in := datum.Compare(v, a) >= 0 && datum.Compare(v, b) <= 0
		return datum.Bool(in != not), nil
	}, x, lo, hi), nil
}

// rowExprs returns the elements of a row constructor of two or more
// values ((a, b) or ROW(a, b)), or nil.
func rowExprs(e tree.Expr) tree.Exprs {
	for {
		p, ok := e.(*tree.ParenExpr)
		if !ok {
			break
		}
		e = p.Expr
	}
	if t, ok := e.(*tree.Tuple); ok && len(t.Exprs) > 1 {
		return t.Exprs
	}
	return nil
}

// rowInExpr compiles (a, b, ...) [NOT] IN ((x, y, ...), ...) and
// (a, b, ...) [NOT] IN (SELECT x, y, ...): each element is compared
// pairwise as a row equality, with SQL's three-valued result (an element
// with a NULL comparison and no false one is unknown).
func (c *compiler) rowInExpr(n *tree.ComparisonExpr, left tree.Exprs, sc *scope) (*expr, error) {
	not := n.Operator == tree.NotIn
	xs := make([]*expr, len(left))
	for i, l := range left {
		x, err := c.compile(l, sc, datum.Type{})
		if err != nil {
			return nil, err
		}
		xs[i] = x
	}
	eval := func(rc *runCtx, row Row, xs []*expr) (Row, error) {
		out := make(Row, len(xs))
		for i, x := range xs {
			v, err := x.fn(rc, row)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	// rowsIn folds the comparisons of v with each candidate row.
	rowsIn := func(v Row, cands []Row) datum.Value {
		sawNull := false
		for _, w := range cands {
			eq, null := true, false
			for i := range v {
				switch {
				case v[i].IsNull() || w[i].IsNull():
					null = true
				case datum.Compare(v[i], w[i]) != 0:
					eq = false
				}
				if !eq {
					break
				}
			}
			if eq && !null {
				return datum.Bool(!not)
			}
			if eq && null {
				sawNull = true
			}
		}
		if sawNull {
			return datum.Null
		}
		return datum.Bool(not)
	}
	if sub, ok := n.Right.(*tree.Subquery); ok {
		p, corr, err := c.planSubquery(sub.Select, sc)
		if err != nil {
			return nil, err
		}
		if len(p.cols()) != len(xs) {
			return nil, sqlerr.New(sqlerr.SyntaxError, "subquery has %d columns, the row has %d", len(p.cols()), len(xs))
		}
		key := new(int)
		return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
			v, err := eval(rc, row, xs)
			if err != nil {
				return datum.Null, err
			}
			var cands []Row
			if c, ok := rc.cached(key); ok && !corr {
				cands = c.([]Row)
			} else {
				rc.outer = append(rc.outer, row)
				err := p.run(rc, func(r Row) error { cands = append(cands, r); return nil })
				rc.outer = rc.outer[:len(rc.outer)-1]
				if err != nil {
					return datum.Null, err
				}
				if !corr {
					rc.store(key, cands)
				}
			}
			return rowsIn(v, cands), nil
		}, xs...), nil
	}
	list, ok := n.Right.(*tree.Tuple)
	if !ok {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "row value IN needs a list of rows or a subquery")
	}
	items := make([][]*expr, len(list.Exprs))
	deps := append([]*expr(nil), xs...)
	for i, it := range list.Exprs {
		elems := rowExprs(it)
		if len(elems) != len(xs) {
			return nil, sqlerr.New(sqlerr.SyntaxError, "IN list element %d does not have %d values", i+1, len(xs))
		}
		items[i] = make([]*expr, len(elems))
		for j, el := range elems {
			e, err := c.compile(el, sc, xs[j].t)
			if err != nil {
				return nil, err
			}
			if el != tree.DNull && left[j] != tree.DNull {
				if err := comparable(xs[j].t, e.t); err != nil {
					return nil, err
				}
			}
			items[i][j] = e
			deps = append(deps, e)
		}
	}
	return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
		v, err := eval(rc, row, xs)
		if err != nil {
			return datum.Null, err
		}
		cands := make([]Row, len(items))
		for i, it := range items {
			if cands[i], err = eval(rc, row, it); err != nil {
				return datum.Null, err
			}
		}
		return rowsIn(v, cands), nil
	}, deps...), nil
}

func (c *compiler) inExpr(n *tree.ComparisonExpr, sc *scope) (*expr, error) {
	if left := rowExprs(n.Left); left != nil {
		return c.rowInExpr(n, left, sc)
	}
	not := n.Operator == tree.NotIn
	x, err := c.compile(n.Left, sc, datum.Type{})
	if err != nil {
		return nil, err
	}
	if sub, ok := n.Right.(*tree.Subquery); ok {
		p, corr, err := c.planSubquery(sub.Select, sc)
		if err != nil {
			return nil, err
		}
		if len(p.cols()) != 1 {
			return nil, sqlerr.New(sqlerr.SyntaxError, "subquery has too many columns")
		}
		key := new(int)
		return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
			v, err := x.fn(rc, row)
			if err != nil {
				return v, err
			}
			var vals []datum.Value
			if c, ok := rc.cached(key); ok && !corr {
				vals = c.([]datum.Value)
			} else {
				rc.outer = append(rc.outer, row)
				err := p.run(rc, func(r Row) error { vals = append(vals, r[0]); return nil })
				rc.outer = rc.outer[:len(rc.outer)-1]
				if err != nil {
					return datum.Null, err
				}
				if !corr {
					rc.store(key, vals)
				}
			}
			return inList(v, vals, not), nil
		}, x), nil
	}
	var items []tree.Expr
	switch r := n.Right.(type) {
	case *tree.Tuple:
		items = r.Exprs
	default:
		items = []tree.Expr{r}
	}
	list := make([]*expr, len(items))
	for i, it := range items {
		if list[i], err = c.compile(it, sc, x.t); err != nil {
			return nil, err
		}
	}
	deps := append([]*expr{x}, list...)
	return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
		v, err := x.fn(rc, row)
		if err != nil {
			return v, err
		}
		vals := make([]datum.Value, len(list))
		for i, l := range list {
			if vals[i], err = l.fn(rc, row); err != nil {
				return datum.Null, err
			}
		}
		return inList(v, vals, not), nil
	}, deps...), nil
}

func inList(v datum.Value, vals []datum.Value, not bool) datum.Value {
	if v.IsNull() {
		return datum.Null
	}
	sawNull := false
	for _, w := range vals {
		if w.IsNull() {
			sawNull = true
			continue
		}
		if datum.Compare(v, w) == 0 {
			return datum.Bool(!not)
		}
	}
	if sawNull {
		return datum.Null
	}
	return datum.Bool(not)
}

func resultType(a, b datum.Type) datum.Type {
	ka, kb := a.Kind(), b.Kind()
	switch {
	case ka == datum.KFloat || kb == datum.KFloat:
		return datum.TFloat8
	case ka == datum.KNumeric || kb == datum.KNumeric:
		return datum.TNumeric
	case a.OID == datum.OIDInt8 || b.OID == datum.OIDInt8:
		return datum.TInt8
	case ka == datum.KInt && kb == datum.KInt:
		if a.OID == datum.OIDInt2 && b.OID == datum.OIDInt2 {
			return datum.TInt2
		}
		return datum.TInt4
	}
	return a
}

func (c *compiler) binary(n *tree.BinaryExpr, sc *scope, want datum.Type) (*expr, error) {
	a, b, err := c.binaryOperands(n, sc, want)
	if err != nil {
		return nil, err
	}
	op := n.Operator
	var t datum.Type
	switch op {
	case tree.Concat:
		t = datum.TText
	case tree.Plus, tree.Minus, tree.Mult, tree.Div, tree.Mod, tree.FloorDiv, tree.Pow:
		ka, kb := a.t.Kind(), b.t.Kind()
		switch {
		case ka == datum.KDate && kb == datum.KInt:
			t = datum.TDate
		case ka == datum.KDate && kb == datum.KDate && op == tree.Minus:
			t = datum.TInt4
		case (ka == datum.KInt || ka == datum.KFloat || ka == datum.KNumeric || a.t.OID == datum.OIDUnknown) &&
			(kb == datum.KInt || kb == datum.KFloat || kb == datum.KNumeric || b.t.OID == datum.OIDUnknown):
			t = resultType(a.t, b.t)
			if op == tree.Pow {
				t = datum.TFloat8
			}
		default:
			return nil, sqlerr.New(sqlerr.UndefinedFunction, "operator does not exist: %s %s %s", a.t.Name(), op, b.t.Name())
		}
	default:
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "operator %s is not supported", op)
	}
	f := func(rc *runCtx, row Row) (datum.Value, error) {
		x, err := a.fn(rc, row)
		if err != nil || x.IsNull() {
			return datum.Null, err
		}
		y, err := b.fn(rc, row)
		if err != nil || y.IsNull() {
			return datum.Null, err
		}
		return arith(op, x, y, t)
	}
	if a.cnst && b.cnst {
		v, err := f(nil, nil)
		if err != nil {
			return nil, err
		}
		return constExpr(v, t), nil
	}
	return mk(t, f, a, b), nil
}

func arith(op tree.BinaryOperator, x, y datum.Value, t datum.Type) (datum.Value, error) {
	if op == tree.Concat {
		return datum.Text(x.String() + y.String()), nil
	}
	if x.K == datum.KText {
		v, err := datum.Cast(x, t)
		if err != nil {
			return v, err
		}
		x = v
	}
	if y.K == datum.KText {
		v, err := datum.Cast(y, t)
		if err != nil {
			return v, err
		}
		y = v
	}
	if x.K == datum.KDate {
		switch {
		case y.K == datum.KInt && op == tree.Plus:
			return datum.Date(x.I + y.I), nil
		case y.K == datum.KInt && op == tree.Minus:
			return datum.Date(x.I - y.I), nil
		case y.K == datum.KDate && op == tree.Minus:
			return datum.Int(x.I - y.I), nil
		}
	}
	if op == tree.Pow {
		return datum.Float(math.Pow(x.AsFloat(), y.AsFloat())), nil
	}
	switch {
	case x.K == datum.KInt && y.K == datum.KInt:
		a, b := x.I, y.I
		var r int64
		switch op {
		case tree.Plus:
			r = a + b
			if (r > a) != (b > 0) {
				return datum.Null, sqlerr.New(sqlerr.NumericOutOfRange, "%s out of range", t.Name())
			}
		case tree.Minus:
			r = a - b
			if (r < a) != (b > 0) {
				return datum.Null, sqlerr.New(sqlerr.NumericOutOfRange, "%s out of range", t.Name())
			}
		case tree.Mult:
			r = a * b
			if a != 0 && (r/a != b || (a == -1 && b == math.MinInt64)) {
				return datum.Null, sqlerr.New(sqlerr.NumericOutOfRange, "%s out of range", t.Name())
			}
		case tree.Div, tree.FloorDiv:
			if b == 0 {
				return datum.Null, sqlerr.New(sqlerr.DivisionByZero, "division by zero")
			}
			r = a / b
		case tree.Mod:
			if b == 0 {
				return datum.Null, sqlerr.New(sqlerr.DivisionByZero, "division by zero")
			}
			r = a % b
		}
		v := datum.Int(r)
		if t.OID == datum.OIDInt4 || t.OID == datum.OIDInt2 {
			if _, err := datum.Cast(v, t); err != nil {
				return datum.Null, err
			}
		}
		return v, nil
	case x.K == datum.KFloat || y.K == datum.KFloat:
		a, b := x.AsFloat(), y.AsFloat()
		switch op {
		case tree.Plus:
			return datum.Float(a + b), nil
		case tree.Minus:
			return datum.Float(a - b), nil
		case tree.Mult:
			return datum.Float(a * b), nil
		case tree.Div, tree.FloorDiv:
			if b == 0 {
				return datum.Null, sqlerr.New(sqlerr.DivisionByZero, "division by zero")
			}
			return datum.Float(a / b), nil
		case tree.Mod:
			if b == 0 {
				return datum.Null, sqlerr.New(sqlerr.DivisionByZero, "division by zero")
			}
			return datum.Float(math.Mod(a, b)), nil
		}
	case (x.K == datum.KNumeric || x.K == datum.KInt) && (y.K == datum.KNumeric || y.K == datum.KInt):
		a, b := x.AsNumeric(), y.AsNumeric()
		d := new(apd.Decimal)
		ctx := datum.DecCtx()
		var err error
		switch op {
		case tree.Plus:
			_, err = ctx.Add(d, a, b)
		case tree.Minus:
			_, err = ctx.Sub(d, a, b)
		case tree.Mult:
			_, err = ctx.Mul(d, a, b)
		case tree.Div, tree.FloorDiv:
			if b.IsZero() {
				return datum.Null, sqlerr.New(sqlerr.DivisionByZero, "division by zero")
			}
			c := *ctx
			c.Precision = 20
			_, err = c.Quo(d, a, b)
			if err == nil {
				// PostgreSQL keeps at least 16 significant digits; trim
				// trailing zeros beyond the operands' scale.
				d.Reduce(d)
				if d.Exponent < -16 {
					c.Quantize(d, d, -16)
				}
			}
		case tree.Mod:
			if b.IsZero() {
				return datum.Null, sqlerr.New(sqlerr.DivisionByZero, "division by zero")
			}
			_, err = ctx.Rem(d, a, b)
		}
		if err != nil {
			return datum.Null, sqlerr.New(sqlerr.NumericOutOfRange, "numeric: %v", err)
		}
		return datum.Numeric(d), nil
	}
	return datum.Null, sqlerr.New(sqlerr.UndefinedFunction, "operator does not exist: %s %s %s", x.KindName(), op, y.KindName())
}

func (c *compiler) caseExpr(n *tree.CaseExpr, sc *scope, want datum.Type) (*expr, error) {
	var subject *expr
	var err error
	if n.Expr != nil {
		if subject, err = c.compile(n.Expr, sc, datum.Type{}); err != nil {
			return nil, err
		}
	}
	type when struct{ cond, val *expr }
	whens := make([]when, len(n.Whens))
	deps := []*expr{subject}
	t := want
	for i, w := range n.Whens {
		hint := datum.TBool
		if subject != nil {
			hint = subject.t
		}
		cond, err := c.compile(w.Cond, sc, hint)
		if err != nil {
			return nil, err
		}
		val, err := c.compile(w.Val, sc, t)
		if err != nil {
			return nil, err
		}
		if t.OID == 0 || (val.t.OID != datum.OIDUnknown && !val.cnst) || (t.OID == datum.OIDUnknown) {
			t = val.t
		}
		whens[i] = when{cond, val}
		deps = append(deps, cond, val)
	}
	var els *expr
	if n.Else != nil {
		if els, err = c.compile(n.Else, sc, t); err != nil {
			return nil, err
		}
		deps = append(deps, els)
		if t.OID == 0 {
			t = els.t
		}
	}
	if t.OID == 0 {
		t = datum.TText
	}
	return mk(t, func(rc *runCtx, row Row) (datum.Value, error) {
		var sv datum.Value
		if subject != nil {
			v, err := subject.fn(rc, row)
			if err != nil {
				return v, err
			}
			sv = v
		}
		for _, w := range whens {
			cv, err := w.cond.fn(rc, row)
			if err != nil {
				return cv, err
			}
			match := false
			if subject != nil {
				match = !sv.IsNull() && !cv.IsNull() && datum.Compare(sv, cv) == 0
			} else {
				match = cv.True()
			}
			if match {
				return w.val.fn(rc, row)
			}
		}
		if els != nil {
			return els.fn(rc, row)
		}
		return datum.Null, nil
	}, deps...), nil
}

func (c *compiler) coalesce(args tree.Exprs, sc *scope, want datum.Type, greatest, least bool) (*expr, error) {
	xs := make([]*expr, len(args))
	t := want
	for i, a := range args {
		x, err := c.compile(a, sc, t)
		if err != nil {
			return nil, err
		}
		if t.OID == 0 || t.OID == datum.OIDUnknown {
			t = x.t
		}
		xs[i] = x
	}
	return mk(t, func(rc *runCtx, row Row) (datum.Value, error) {
		var best datum.Value
		for _, x := range xs {
			v, err := x.fn(rc, row)
			if err != nil {
				return v, err
			}
			if v.IsNull() {
				continue
			}
			if !greatest && !least {
				return v, nil
			}
			if best.IsNull() || (greatest && datum.Compare(v, best) > 0) || (least && datum.Compare(v, best) < 0) {
				best = v
			}
		}
		return best, nil
	}, xs...), nil
}

// subquery compiles a scalar or EXISTS subquery.
func (c *compiler) subquery(n *tree.Subquery, sc *scope) (*expr, error) {
	p, corr, err := c.planSubquery(n.Select, sc)
	if err != nil {
		return nil, err
	}
	exists := n.Exists
	t := datum.TBool
	if !exists {
		if len(p.cols()) != 1 {
			return nil, sqlerr.New(sqlerr.SyntaxError, "subquery must return only one column")
		}
		t = p.cols()[0].typ
	}
	key := new(int)
	return mk(t, func(rc *runCtx, row Row) (datum.Value, error) {
		if c, ok := rc.cached(key); ok && !corr {
			return c.(datum.Value), nil
		}
		var out datum.Value
		n := 0
		rc.outer = append(rc.outer, row)
		err := p.run(rc, func(r Row) error {
			n++
			if exists {
				return errStop
			}
			if n > 1 {
				return sqlerr.New(sqlerr.CardinalityViolation, "more than one row returned by a subquery used as an expression")
			}
			out = r[0]
			return nil
		})
		rc.outer = rc.outer[:len(rc.outer)-1]
		if err != nil && err != errStop {
			return datum.Null, err
		}
		if exists {
			out = datum.Bool(n > 0)
		}
		if !corr {
			rc.store(key, out)
		}
		return out, nil
	}), nil
}

// planSubquery plans a subquery with sc as its outer scope and reports
// whether it refers to it (correlated).
func (c *compiler) planSubquery(sel tree.SelectStatement, sc *scope) (plan, bool, error) {
	saved := c.agg
	c.agg = nil
	defer func() { c.agg = saved }()
	// Try without the outer scope first: uncorrelated subqueries are
	// evaluated once.
	p, err := c.planSelectStmt(&tree.Select{Select: sel}, nil)
	if err == nil {
		return p, false, nil
	}
	if sqlerr.Code(err) != sqlerr.UndefinedColumn {
		return nil, false, err
	}
	p, err = c.planSelectStmt(&tree.Select{Select: sel}, sc)
	if err != nil {
		return nil, false, err
	}
	return p, true, nil
}

func epochNow() int64 { return time.Now().UnixMicro() }

var errStop = fmt.Errorf("exec: stop")

// anyAll compiles x op ANY/ALL (array or subquery).
func (c *compiler) anyAll(n *tree.ComparisonExpr, sc *scope) (*expr, error) {
	x, err := c.compile(n.Left, sc, datum.Type{})
	if err != nil {
		return nil, err
	}
	all := n.Operator == tree.All
	op := n.SubOperator
	var list func(rc *runCtx, row Row) ([]datum.Value, error)
	if sub, ok := n.Right.(*tree.Subquery); ok {
		p, _, err := c.planSubquery(sub.Select, sc)
		if err != nil {
			return nil, err
		}
		list = func(rc *runCtx, row Row) ([]datum.Value, error) {
			var vals []datum.Value
			rc.outer = append(rc.outer, row)
			err := p.run(rc, func(r Row) error { vals = append(vals, r[0]); return nil })
			rc.outer = rc.outer[:len(rc.outer)-1]
			return vals, err
		}
	} else {
		arr, err := c.compile(n.Right, sc, datum.Type{})
		if err != nil {
			return nil, err
		}
		list = func(rc *runCtx, row Row) ([]datum.Value, error) {
			v, err := arr.fn(rc, row)
			if err != nil || v.IsNull() {
				return nil, err
			}
			s := strings.Trim(v.String(), "{}")
			if s == "" {
				return nil, nil
			}
			var out []datum.Value
			for _, e := range strings.Split(s, ",") {
				ev, err := datum.Cast(datum.Text(e), x.t)
				if err != nil {
					ev = datum.Text(e)
				}
				out = append(out, ev)
			}
			return out, nil
		}
	}
	return mk(datum.TBool, func(rc *runCtx, row Row) (datum.Value, error) {
		v, err := x.fn(rc, row)
		if err != nil || v.IsNull() {
			return datum.Null, err
		}
		vals, err := list(rc, row)
		if err != nil {
			return datum.Null, err
		}
		null := false
		for _, w := range vals {
			if w.IsNull() {
				null = true
				continue
			}
			r := cmpResult(op, datum.Compare(v, w))
			if r && !all {
				return datum.Bool(true), nil
			}
			if !r && all {
				return datum.Bool(false), nil
			}
		}
		if null {
			return datum.Null, nil
		}
		return datum.Bool(all), nil
	}, x), nil
}
