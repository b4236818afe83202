package exec

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"
	"github.com/cockroachdb/apd"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// Aggregate function names.
var aggNames = map[string]bool{"count": true, "sum": true, "avg": true, "min": true, "max": true,
	"bool_and": true, "bool_or": true, "every": true, "string_agg": true, "array_agg": true}

func funcName(f *tree.FuncExpr) string {
	n := strings.ToLower(f.Func.String())
	n = strings.TrimPrefix(n, "pg_catalog.")
	return strings.Trim(n, `"`)
}

func isAggregate(f *tree.FuncExpr) bool { return aggNames[funcName(f)] && f.WindowDef == nil }

type scalarFn struct {
	ret  func(args []*expr) datum.Type
	eval func(rc *runCtx, args []datum.Value) (datum.Value, error)
	// strict: NULL in, NULL out.
	strict           bool
	minArgs, maxArgs int
}

func fixed(t datum.Type) func([]*expr) datum.Type { return func([]*expr) datum.Type { return t } }
func firstArg(args []*expr) datum.Type {
	if len(args) == 0 {
		return datum.TText
	}
	return args[0].t
}

var scalarFns map[string]*scalarFn

func init() {
	text := fixed(datum.TText)
	str := func(f func(s string, args []datum.Value) (datum.Value, error)) func(*runCtx, []datum.Value) (datum.Value, error) {
		return func(_ *runCtx, a []datum.Value) (datum.Value, error) { return f(a[0].String(), a) }
	}
	now := func(rc *runCtx, _ []datum.Value) (datum.Value, error) { return datum.Timestamp(rc.now), nil }
	scalarFns = map[string]*scalarFn{
		"now":                   {ret: fixed(datum.Type{OID: datum.OIDTimestampTZ, Typmod: -1}), eval: now},
		"current_timestamp":     {ret: fixed(datum.Type{OID: datum.OIDTimestampTZ, Typmod: -1}), eval: now, maxArgs: 1},
		"transaction_timestamp": {ret: fixed(datum.Type{OID: datum.OIDTimestampTZ, Typmod: -1}), eval: now},
		"statement_timestamp":   {ret: fixed(datum.Type{OID: datum.OIDTimestampTZ, Typmod: -1}), eval: now},
		"localtimestamp":        {ret: fixed(datum.TTimestamp), eval: now, maxArgs: 1},
		"clock_timestamp": {ret: fixed(datum.Type{OID: datum.OIDTimestampTZ, Typmod: -1}), eval: func(*runCtx, []datum.Value) (datum.Value, error) {
			return datum.Timestamp(time.Now().UnixMicro()), nil
		}},
		"current_date": {ret: fixed(datum.TDate), eval: func(rc *runCtx, _ []datum.Value) (datum.Value, error) {
			return datum.Date(rc.now / 86400e6), nil
		}},
		"version": {ret: text, eval: func(*runCtx, []datum.Value) (datum.Value, error) {
			return datum.Text("PostgreSQL 15.0 (CumulusDB) on x86_64-pc-linux-gnu"), nil
		}},
		"current_database": {ret: fixed(datum.TName), eval: constFn(datum.Text("cumulus"))},
		"current_schema":   {ret: fixed(datum.TName), eval: constFn(datum.Text("public"))},
		"current_user":     {ret: fixed(datum.TName), eval: constFn(datum.Text("cumulus"))},
		"session_user":     {ret: fixed(datum.TName), eval: constFn(datum.Text("cumulus"))},
		"pg_backend_pid": {ret: fixed(datum.TInt4), eval: func(rc *runCtx, _ []datum.Value) (datum.Value, error) {
			return datum.Int(int64(rc.s.ID)), nil
		}},
		"lower": {strict: true, ret: text, minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) { return datum.Text(strings.ToLower(s)), nil })},
		"upper": {strict: true, ret: text, minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) { return datum.Text(strings.ToUpper(s)), nil })},
		"length": {strict: true, ret: fixed(datum.TInt4), minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) {
			return datum.Int(int64(utf8.RuneCountInString(s))), nil
		})},
		"char_length": {strict: true, ret: fixed(datum.TInt4), minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) {
			return datum.Int(int64(utf8.RuneCountInString(s))), nil
		})},
		"octet_length": {strict: true, ret: fixed(datum.TInt4), minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) { return datum.Int(int64(len(s))), nil })},
		"substr":       {strict: true, ret: text, minArgs: 2, maxArgs: 3, eval: str(substr)},
		"substring":    {strict: true, ret: text, minArgs: 2, maxArgs: 3, eval: str(substr)},
		"btrim":        {strict: true, ret: text, minArgs: 1, maxArgs: 2, eval: str(trimFn(strings.Trim))},
		"trim":         {strict: true, ret: text, minArgs: 1, maxArgs: 2, eval: str(trimFn(strings.Trim))},
		"ltrim":        {strict: true, ret: text, minArgs: 1, maxArgs: 2, eval: str(trimFn(strings.TrimLeft))},
		"rtrim":        {strict: true, ret: text, minArgs: 1, maxArgs: 2, eval: str(trimFn(strings.TrimRight))},
		"replace": {strict: true, ret: text, minArgs: 3, eval: str(func(s string, a []datum.Value) (datum.Value, error) {
			return datum.Text(strings.ReplaceAll(s, a[1].String(), a[2].String())), nil
		})},
		"strpos": {strict: true, ret: fixed(datum.TInt4), minArgs: 2, eval: str(func(s string, a []datum.Value) (datum.Value, error) {
			i := strings.Index(s, a[1].String())
			if i < 0 {
				return datum.Int(0), nil
			}
			return datum.Int(int64(utf8.RuneCountInString(s[:i]) + 1)), nil
		})},
		"left": {strict: true, ret: text, minArgs: 2, eval: str(func(s string, a []datum.Value) (datum.Value, error) {
			r := []rune(s)
			n := int(a[1].I)
			if n < 0 {
				n = max(len(r)+n, 0)
			}
			return datum.Text(string(r[:min(n, len(r))])), nil
		})},
		"right": {strict: true, ret: text, minArgs: 2, eval: str(func(s string, a []datum.Value) (datum.Value, error) {
			r := []rune(s)
			n := int(a[1].I)
			if n < 0 {
				n = max(len(r)+n, 0)
			}
			return datum.Text(string(r[len(r)-min(n, len(r)):])), nil
		})},
		"repeat": {strict: true, ret: text, minArgs: 2, eval: str(func(s string, a []datum.Value) (datum.Value, error) {
			if a[1].I < 0 || a[1].I*int64(len(s)) > 1<<26 {
				return datum.Text(""), nil
			}
			return datum.Text(strings.Repeat(s, int(a[1].I))), nil
		})},
		"lpad": {strict: true, ret: text, minArgs: 2, maxArgs: 3, eval: str(padFn(true))},
		"rpad": {strict: true, ret: text, minArgs: 2, maxArgs: 3, eval: str(padFn(false))},
		"concat": {ret: text, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			var b strings.Builder
			for _, v := range a {
				b.WriteString(v.String())
			}
			return datum.Text(b.String()), nil
		}},
		"md5": {strict: true, ret: text, minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) { return datum.Text(md5hex(s)), nil })},
		"abs": {strict: true, ret: firstArg, minArgs: 1, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			switch a[0].K {
			case datum.KInt:
				if a[0].I < 0 {
					return negate(a[0])
				}
				return a[0], nil
			case datum.KFloat:
				return datum.Float(math.Abs(a[0].F)), nil
			case datum.KNumeric:
				return datum.Numeric(new(apd.Decimal).Abs(a[0].D)), nil
			}
			return datum.Null, sqlerr.New(sqlerr.UndefinedFunction, "function abs(%s) does not exist", a[0].KindName())
		}},
		"round":   {strict: true, ret: roundType, minArgs: 1, maxArgs: 2, eval: roundFn(apd.RoundHalfUp)},
		"trunc":   {strict: true, ret: roundType, minArgs: 1, maxArgs: 2, eval: roundFn(apd.RoundDown)},
		"floor":   {strict: true, ret: roundType, minArgs: 1, eval: roundFn(apd.RoundFloor)},
		"ceil":    {strict: true, ret: roundType, minArgs: 1, eval: roundFn(apd.RoundCeiling)},
		"ceiling": {strict: true, ret: roundType, minArgs: 1, eval: roundFn(apd.RoundCeiling)},
		"sqrt": {strict: true, ret: fixed(datum.TFloat8), minArgs: 1, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			return datum.Float(math.Sqrt(a[0].AsFloat())), nil
		}},
		"power": {strict: true, ret: fixed(datum.TFloat8), minArgs: 2, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			return datum.Float(math.Pow(a[0].AsFloat(), a[1].AsFloat())), nil
		}},
		"mod": {strict: true, ret: firstArg, minArgs: 2, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			return arith(tree.Mod, a[0], a[1], datum.DefaultType(a[0].K))
		}},
		"random":    {ret: fixed(datum.TFloat8), eval: func(*runCtx, []datum.Value) (datum.Value, error) { return datum.Float(rand.Float64()), nil }},
		"extract":   {strict: true, ret: fixed(datum.TNumeric), minArgs: 2, eval: extract},
		"date_part": {strict: true, ret: fixed(datum.TFloat8), minArgs: 2, eval: extract},
		// Catalog helpers psql uses.
		"pg_table_is_visible":    {ret: fixed(datum.TBool), eval: constFn(datum.Bool(true))},
		"pg_type_is_visible":     {ret: fixed(datum.TBool), eval: constFn(datum.Bool(true))},
		"pg_function_is_visible": {ret: fixed(datum.TBool), eval: constFn(datum.Bool(true))},
		"has_table_privilege":    {ret: fixed(datum.TBool), eval: constFn(datum.Bool(true))},
		"has_schema_privilege":   {ret: fixed(datum.TBool), eval: constFn(datum.Bool(true))},
		"has_database_privilege": {ret: fixed(datum.TBool), eval: constFn(datum.Bool(true))},
		"current_schemas":        {ret: fixed(datum.Type{OID: datum.OIDTextArray, Typmod: -1}), eval: constFn(datum.Text("{pg_catalog,public}"))},
		"array_position": {strict: true, ret: fixed(datum.TInt4), minArgs: 2, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			for k, e := range strings.Split(strings.Trim(a[0].String(), "{}"), ",") {
				if e == a[1].String() {
					return datum.Int(int64(k + 1)), nil
				}
			}
			return datum.Null, nil
		}},
		"pg_relation_is_publishable":      {ret: fixed(datum.TBool), eval: constFn(datum.Bool(false))},
		"pg_is_in_recovery":               {ret: fixed(datum.TBool), eval: constFn(datum.Bool(false))},
		"pg_get_userbyid":                 {ret: fixed(datum.TName), eval: constFn(datum.Text("cumulus"))},
		"pg_encoding_to_char":             {ret: fixed(datum.TName), eval: constFn(datum.Text("UTF8"))},
		"obj_description":                 {ret: text, eval: constFn(datum.Null)},
		"col_description":                 {ret: text, eval: constFn(datum.Null)},
		"shobj_description":               {ret: text, eval: constFn(datum.Null)},
		"pg_get_partkeydef":               {ret: text, eval: constFn(datum.Null)},
		"pg_get_statisticsobjdef_columns": {ret: text, eval: constFn(datum.Null)},
		"array_to_string":                 {strict: true, ret: text, minArgs: 2, maxArgs: 3, eval: arrayToString},
		"pg_relation_size":                {ret: fixed(datum.TInt8), eval: constFn(datum.Int(0))},
		"pg_total_relation_size":          {ret: fixed(datum.TInt8), eval: constFn(datum.Int(0))},
		"pg_table_size":                   {ret: fixed(datum.TInt8), eval: constFn(datum.Int(0))},
		"pg_size_pretty": {strict: true, ret: text, minArgs: 1, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			return datum.Text(fmt.Sprintf("%d bytes", a[0].I)), nil
		}},
		"format_type": {ret: text, minArgs: 2, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) {
			if a[0].IsNull() {
				return datum.Null, nil
			}
			mod := int32(-1)
			if !a[1].IsNull() {
				mod = int32(a[1].I)
			}
			return datum.Text(datum.Type{OID: uint32(a[0].I), Typmod: mod}.Name()), nil
		}},
		"pg_get_expr": {ret: text, minArgs: 2, maxArgs: 3, eval: func(_ *runCtx, a []datum.Value) (datum.Value, error) { return a[0], nil }},
		"pg_get_indexdef": {ret: text, minArgs: 1, maxArgs: 3, eval: func(rc *runCtx, a []datum.Value) (datum.Value, error) {
			return rc.s.indexDef(a[0])
		}},
		"pg_get_constraintdef": {ret: text, minArgs: 1, maxArgs: 2, eval: func(rc *runCtx, a []datum.Value) (datum.Value, error) {
			return rc.s.constraintDef(a[0])
		}},
		"quote_ident": {strict: true, ret: text, minArgs: 1, eval: str(func(s string, _ []datum.Value) (datum.Value, error) {
			return datum.Text(`"` + strings.ReplaceAll(s, `"`, `""`) + `"`), nil
		})},
		"set_config": {ret: text, minArgs: 3, eval: func(rc *runCtx, a []datum.Value) (datum.Value, error) {
			rc.s.setVar(a[0].String(), a[1].String())
			return a[1], nil
		}},
		"nextval": {strict: true, ret: fixed(datum.TInt8), minArgs: 1, eval: func(rc *runCtx, a []datum.Value) (datum.Value, error) {
			v, err := rc.s.eng.nextval(a[0].String())
			return datum.Int(v), err
		}},
		"current_setting": {strict: true, ret: text, minArgs: 1, maxArgs: 2, eval: func(rc *runCtx, a []datum.Value) (datum.Value, error) {
			return datum.Text(rc.s.getVar(a[0].String())), nil
		}},
	}
}

func constFn(v datum.Value) func(*runCtx, []datum.Value) (datum.Value, error) {
	return func(*runCtx, []datum.Value) (datum.Value, error) { return v, nil }
}

func substr(s string, a []datum.Value) (datum.Value, error) {
	r := []rune(s)
	start := int(a[1].I) - 1
	end := len(r)
	if len(a) > 2 {
		if a[2].I < 0 {
			return datum.Null, sqlerr.New(sqlerr.InvalidParameterValue, "negative substring length not allowed")
		}
		end = start + int(a[2].I)
	}
	start = max(start, 0)
	end = min(end, len(r))
	if start >= end {
		return datum.Text(""), nil
	}
	return datum.Text(string(r[start:end])), nil
}

func trimFn(f func(string, string) string) func(string, []datum.Value) (datum.Value, error) {
	return func(s string, a []datum.Value) (datum.Value, error) {
		cut := " "
		if len(a) > 1 {
			cut = a[1].String()
		}
		return datum.Text(f(s, cut)), nil
	}
}

func padFn(left bool) func(string, []datum.Value) (datum.Value, error) {
	return func(s string, a []datum.Value) (datum.Value, error) {
		n := int(a[1].I)
		fill := " "
		if len(a) > 2 {
			fill = a[2].String()
		}
		r := []rune(s)
		if n <= len(r) || fill == "" {
			return datum.Text(string(r[:max(min(n, len(r)), 0)])), nil
		}
		var pad []rune
		fr := []rune(fill)
		for len(pad) < n-len(r) {
			pad = append(pad, fr[len(pad)%len(fr)])
		}
		if left {
			return datum.Text(string(pad) + s), nil
		}
		return datum.Text(s + string(pad)), nil
	}
}

func roundType(args []*expr) datum.Type {
	if len(args) > 0 && args[0].t.Kind() == datum.KFloat {
		return datum.TFloat8
	}
	return datum.TNumeric
}

func roundFn(mode string) func(*runCtx, []datum.Value) (datum.Value, error) {
	return func(_ *runCtx, a []datum.Value) (datum.Value, error) {
		scale := int32(0)
		if len(a) > 1 {
			scale = int32(a[1].I)
		}
		if a[0].K == datum.KFloat {
			p := math.Pow(10, float64(scale))
			f := a[0].F * p
			switch mode {
			case apd.RoundHalfUp:
				f = math.Round(f)
			case apd.RoundDown:
				f = math.Trunc(f)
			case apd.RoundFloor:
				f = math.Floor(f)
			case apd.RoundCeiling:
				f = math.Ceil(f)
			}
			return datum.Float(f / p), nil
		}
		d := new(apd.Decimal)
		c := *datum.DecCtx()
		c.Rounding = mode
		if _, err := c.Quantize(d, a[0].AsNumeric(), -scale); err != nil {
			return datum.Null, sqlerr.New(sqlerr.NumericOutOfRange, "round: %v", err)
		}
		return datum.Numeric(d), nil
	}
}

func extract(_ *runCtx, a []datum.Value) (datum.Value, error) {
	field := strings.ToLower(a[0].String())
	var t time.Time
	switch a[1].K {
	case datum.KDate:
		t = time.Unix(a[1].I*86400, 0).UTC()
	case datum.KTimestamp:
		t = time.UnixMicro(a[1].I).UTC()
	default:
		v, err := datum.Cast(a[1], datum.TTimestamp)
		if err != nil {
			return datum.Null, err
		}
		t = time.UnixMicro(v.I).UTC()
	}
	var x float64
	switch field {
	case "year":
		x = float64(t.Year())
	case "month":
		x = float64(t.Month())
	case "day":
		x = float64(t.Day())
	case "hour":
		x = float64(t.Hour())
	case "minute":
		x = float64(t.Minute())
	case "second":
		x = float64(t.Second()) + float64(t.Nanosecond())/1e9
	case "dow":
		x = float64(t.Weekday())
	case "doy":
		x = float64(t.YearDay())
	case "epoch":
		x = float64(t.UnixMicro()) / 1e6
	case "quarter":
		x = float64((t.Month()-1)/3 + 1)
	default:
		return datum.Null, sqlerr.New(sqlerr.InvalidParameterValue, "unit %q not recognized", field)
	}
	d, _ := new(apd.Decimal).SetFloat64(x)
	return datum.Numeric(d), nil
}

func arrayToString(_ *runCtx, a []datum.Value) (datum.Value, error) {
	s := strings.Trim(a[0].String(), "{}")
	if s == "" {
		return datum.Text(""), nil
	}
	return datum.Text(strings.ReplaceAll(s, ",", a[1].String())), nil
}

// function compiles a scalar function call (aggregates are handled by the
// SELECT planner and reach here only when misplaced).
func (c *compiler) function(n *tree.FuncExpr, sc *scope, want datum.Type) (*expr, error) {
	name := funcName(n)
	if aggNames[name] {
		return nil, sqlerr.New(sqlerr.GroupingError, "aggregate functions are not allowed here")
	}
	if n.WindowDef != nil {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "window functions are not supported")
	}
	switch name {
	case "coalesce", "ifnull":
		return c.coalesce(n.Exprs, sc, want, false, false)
	case "greatest":
		return c.coalesce(n.Exprs, sc, want, true, false)
	case "least":
		return c.coalesce(n.Exprs, sc, want, false, true)
	case "nullif":
		if len(n.Exprs) == 2 {
			return c.compile(&tree.NullIfExpr{Expr1: n.Exprs[0], Expr2: n.Exprs[1]}, sc, want)
		}
	}
	f, ok := scalarFns[name]
	if !ok {
		return nil, sqlerr.New(sqlerr.UndefinedFunction, "function %s does not exist", name)
	}
	if len(n.Exprs) < f.minArgs || (f.maxArgs > 0 && len(n.Exprs) > f.maxArgs) || (f.maxArgs == 0 && f.minArgs > 0 && len(n.Exprs) > f.minArgs) {
		return nil, sqlerr.New(sqlerr.UndefinedFunction, "function %s with %d arguments does not exist", name, len(n.Exprs))
	}
	args := make([]*expr, len(n.Exprs))
	for i, a := range n.Exprs {
		hint := datum.Type{}
		if (name == "substr" || name == "substring" || name == "left" || name == "right" || name == "repeat" || name == "lpad" || name == "rpad") && i > 0 {
			hint = datum.TInt8
		}
		if (name == "round" || name == "trunc") && i == 1 {
			hint = datum.TInt4
		}
		if i == 0 && name != "extract" && name != "date_part" {
			hint = want
			if hint.Kind() != datum.KText && (name == "lower" || name == "upper" || name == "length") {
				hint = datum.TText
			}
		}
		x, err := c.compile(a, sc, hint)
		if err != nil {
			return nil, err
		}
		args[i] = x
	}
	t := f.ret(args)
	eval, strict := f.eval, f.strict
	fn := func(rc *runCtx, row Row) (datum.Value, error) {
		vals := make([]datum.Value, len(args))
		for i, a := range args {
			v, err := a.fn(rc, row)
			if err != nil {
				return v, err
			}
			if strict && v.IsNull() {
				return datum.Null, nil
			}
			if (name == "substr" || name == "substring" || name == "left" || name == "right" || name == "repeat" || name == "lpad" || name == "rpad" || name == "round" || name == "trunc") && i > 0 && v.K != datum.KInt {
				if v, err = datum.Cast(v, datum.TInt8); err != nil {
					return v, err
				}
			}
			vals[i] = v
		}
		return eval(rc, vals)
	}
	return mk(t, fn, args...), nil
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}
