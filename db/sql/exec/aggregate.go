package exec

import (
	"strings"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"
	"github.com/cockroachdb/apd"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

type aggSpec struct {
	name     string
	arg      *expr // nil: count(*)
	distinct bool
	filter   *expr
	sep      *expr // string_agg separator
	t        datum.Type
}

type aggState struct {
	count int64
	val   datum.Value
	sum   *apd.Decimal
	fsum  float64
	isum  int64
	kind  datum.Kind
	seen  map[string]bool
	parts []string
}

// aggNode is a hash aggregation: output rows are the group values followed
// by the aggregate results.
type aggNode struct {
	in     plan
	groups []*expr
	aggs   []aggSpec
	cs     []col
}

func (n *aggNode) cols() []col { return n.cs }

func (n *aggNode) run(rc *runCtx, emit func(Row) error) error {
	type group struct {
		keys   Row
		states []aggState
	}
	groups := map[string]*group{}
	var order []string
	var kb []byte
	err := n.in.run(rc, func(r Row) error {
		keys := make(Row, len(n.groups))
		for i, g := range n.groups {
			v, err := g.fn(rc, r)
			if err != nil {
				return err
			}
			keys[i] = v
		}
		kb = rowKey(kb[:0], keys)
		g := groups[string(kb)]
		if g == nil {
			g = &group{keys: keys, states: make([]aggState, len(n.aggs))}
			groups[string(kb)] = g
			order = append(order, string(kb))
		}
		for i := range n.aggs {
			if err := n.aggs[i].step(rc, r, &g.states[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(groups) == 0 && len(n.groups) == 0 {
		g := &group{states: make([]aggState, len(n.aggs))}
		groups[""] = g
		order = append(order, "")
	}
	for _, k := range order {
		g := groups[k]
		out := make(Row, 0, len(n.groups)+len(n.aggs))
		out = append(out, g.keys...)
		for i := range n.aggs {
			v, err := n.aggs[i].result(&g.states[i])
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		if err := emit(out); err != nil {
			return err
		}
	}
	return nil
}

func (a *aggSpec) step(rc *runCtx, r Row, st *aggState) error {
	if a.filter != nil {
		v, err := a.filter.fn(rc, r)
		if err != nil {
			return err
		}
		if !v.True() {
			return nil
		}
	}
	if a.arg == nil {
		st.count++
		return nil
	}
	v, err := a.arg.fn(rc, r)
	if err != nil {
		return err
	}
	if v.IsNull() {
		return nil
	}
	if a.distinct {
		if st.seen == nil {
			st.seen = map[string]bool{}
		}
		k := string(rowKey(nil, Row{v}))
		if st.seen[k] {
			return nil
		}
		st.seen[k] = true
	}
	st.count++
	switch a.name {
	case "sum", "avg":
		switch v.K {
		case datum.KInt:
			if st.kind == datum.KNull || st.kind == datum.KInt {
				st.kind = datum.KInt
				s := st.isum + v.I
				if (s > st.isum) == (v.I > 0) || v.I == 0 {
					st.isum = s
					return nil
				}
				// Overflow: continue in numeric.
				st.sum = apd.New(st.isum, 0)
				st.kind = datum.KNumeric
			}
			if st.kind == datum.KNumeric {
				_, err := datum.DecCtx().Add(st.sum, st.sum, apd.New(v.I, 0))
				return err
			}
			st.fsum += float64(v.I)
		case datum.KNumeric:
			if st.kind == datum.KInt {
				st.sum = apd.New(st.isum, 0)
				st.kind = datum.KNumeric
			}
			if st.kind == datum.KNull {
				st.sum = apd.New(0, 0)
				st.kind = datum.KNumeric
			}
			if st.kind == datum.KNumeric {
				_, err := datum.DecCtx().Add(st.sum, st.sum, v.D)
				return err
			}
			st.fsum += v.AsFloat()
		case datum.KFloat:
			if st.kind == datum.KInt {
				st.fsum = float64(st.isum)
			} else if st.kind == datum.KNumeric {
				st.fsum = datum.NumericToFloat(st.sum)
			}
			st.kind = datum.KFloat
			st.fsum += v.F
		default:
			return sqlerr.New(sqlerr.UndefinedFunction, "function %s(%s) does not exist", a.name, v.KindName())
		}
	case "min", "max":
		if st.val.IsNull() {
			st.val = v
		} else if c := datum.Compare(v, st.val); (a.name == "min" && c < 0) || (a.name == "max" && c > 0) {
			st.val = v
		}
	case "bool_and", "every":
		if st.count == 1 {
			st.val = v
		} else if !v.True() {
			st.val = datum.Bool(false)
		}
	case "bool_or":
		if st.count == 1 {
			st.val = v
		} else if v.True() {
			st.val = datum.Bool(true)
		}
	case "string_agg", "array_agg":
		st.parts = append(st.parts, v.String())
		if a.sep != nil && st.val.IsNull() {
			s, err := a.sep.fn(rc, r)
			if err != nil {
				return err
			}
			st.val = s
		}
	}
	return nil
}

func (a *aggSpec) result(st *aggState) (datum.Value, error) {
	switch a.name {
	case "count":
		return datum.Int(st.count), nil
	case "sum", "avg":
		if st.count == 0 {
			return datum.Null, nil
		}
		var sum datum.Value
		switch st.kind {
		case datum.KInt:
			sum = datum.Int(st.isum)
		case datum.KNumeric:
			sum = datum.Numeric(st.sum)
		default:
			sum = datum.Float(st.fsum)
		}
		if a.name == "sum" {
			if sum.K == datum.KInt && a.t.OID == datum.OIDNumeric {
				return datum.Numeric(apd.New(sum.I, 0)), nil
			}
			return sum, nil
		}
		if sum.K == datum.KFloat {
			return datum.Float(sum.F / float64(st.count)), nil
		}
		return arith(tree.Div, datum.Numeric(sum.AsNumeric()), datum.Numeric(apd.New(st.count, 0)), datum.TNumeric)
	case "min", "max", "bool_and", "bool_or", "every":
		return st.val, nil
	case "string_agg":
		if st.count == 0 {
			return datum.Null, nil
		}
		return datum.Text(strings.Join(st.parts, st.val.String())), nil
	case "array_agg":
		if st.count == 0 {
			return datum.Null, nil
		}
		return datum.Text("{" + strings.Join(st.parts, ",") + "}"), nil
	}
	return datum.Null, nil
}

// collectAggs finds aggregate calls in e (not inside subqueries).
func collectAggs(e tree.Expr, out *[]*tree.FuncExpr) {
	if e == nil {
		return
	}
	v := &aggVisitor{out: out}
	tree.WalkExprConst(v, e)
}

type aggVisitor struct{ out *[]*tree.FuncExpr }

func (v *aggVisitor) VisitPre(e tree.Expr) (bool, tree.Expr) {
	switch n := e.(type) {
	case *tree.Subquery:
		return false, e
	case *tree.FuncExpr:
		if isAggregate(n) {
			*v.out = append(*v.out, n)
			return false, e
		}
	}
	return true, e
}

func (v *aggVisitor) VisitPost(e tree.Expr) tree.Expr { return e }

func (c *compiler) aggSpecFor(f *tree.FuncExpr, sc *scope) (aggSpec, error) {
	a := aggSpec{name: funcName(f), distinct: f.Type == tree.DistinctFuncType}
	if a.name == "every" {
		a.name = "bool_and"
	}
	if f.Filter != nil {
		x, err := c.compile(f.Filter, sc, datum.TBool)
		if err != nil {
			return a, err
		}
		a.filter = x
	}
	star := false
	if len(f.Exprs) == 1 {
		if _, ok := f.Exprs[0].(tree.UnqualifiedStar); ok {
			star = true
		}
		if n, ok := f.Exprs[0].(*tree.UnresolvedName); ok && n.Star {
			star = true
		}
	}
	if len(f.Exprs) == 0 || star {
		if a.name != "count" {
			return a, sqlerr.New(sqlerr.UndefinedFunction, "function %s(*) does not exist", a.name)
		}
		a.t = datum.TInt8
		return a, nil
	}
	want := 1
	if a.name == "string_agg" {
		want = 2
	}
	if len(f.Exprs) != want {
		return a, sqlerr.New(sqlerr.UndefinedFunction, "function %s with %d arguments does not exist", a.name, len(f.Exprs))
	}
	x, err := c.compile(f.Exprs[0], sc, datum.Type{})
	if err != nil {
		return a, err
	}
	a.arg = x
	if a.name == "string_agg" {
		if a.sep, err = c.compile(f.Exprs[1], sc, datum.TText); err != nil {
			return a, err
		}
	}
	switch a.name {
	case "count":
		a.t = datum.TInt8
	case "sum":
		switch x.t.Kind() {
		case datum.KInt:
			if x.t.OID == datum.OIDInt8 {
				a.t = datum.TNumeric
			} else {
				a.t = datum.TInt8
			}
		case datum.KFloat:
			a.t = datum.TFloat8
		default:
			a.t = datum.TNumeric
		}
	case "avg":
		if x.t.Kind() == datum.KFloat {
			a.t = datum.TFloat8
		} else {
			a.t = datum.TNumeric
		}
	case "bool_and", "bool_or":
		a.t = datum.TBool
	case "string_agg":
		a.t = datum.TText
	case "array_agg":
		a.t = datum.Type{OID: datum.OIDTextArray, Typmod: -1}
	default:
		a.t = x.t
	}
	return a, nil
}
