// Package datum holds SQL values and types: the in-memory Value, column
// types named by PostgreSQL OIDs, comparison, casts, the row and
// order-preserving key encodings stored in the engine, and the text and
// binary wire formats.
package datum

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/apd"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// Kind is the runtime representation of a value.
type Kind uint8

// Kinds.
const (
	KNull Kind = iota
	KBool
	KInt
	KFloat
	KNumeric
	KText
	KDate
	KTimestamp
	KBytes
)

// Value is one SQL value. The zero Value is NULL.
type Value struct {
	K Kind
	I int64        // KBool (0/1), KInt, KDate (days since 1970-01-01), KTimestamp (µs since 1970-01-01 UTC)
	F float64      // KFloat
	S string       // KText, KBytes
	D *apd.Decimal // KNumeric (never modified once built)
}

// Null is the NULL value.
var Null = Value{}

// Constructors.
func Int(i int64) Value        { return Value{K: KInt, I: i} }
func Float(f float64) Value    { return Value{K: KFloat, F: f} }
func Text(s string) Value      { return Value{K: KText, S: s} }
func Date(days int64) Value    { return Value{K: KDate, I: days} }
func Timestamp(us int64) Value { return Value{K: KTimestamp, I: us} }
func Numeric(d *apd.Decimal) Value {
	return Value{K: KNumeric, D: d}
}
func Bool(b bool) Value {
	if b {
		return Value{K: KBool, I: 1}
	}
	return Value{K: KBool}
}

// IsNull reports whether v is NULL.
func (v Value) IsNull() bool { return v.K == KNull }

// True reports whether v is boolean true.
func (v Value) True() bool { return v.K == KBool && v.I != 0 }

// OIDs of the PostgreSQL types CumulusDB knows.
const (
	OIDBool        = 16
	OIDBytea       = 17
	OIDChar        = 18
	OIDName        = 19
	OIDInt8        = 20
	OIDInt2        = 21
	OIDInt2Vector  = 22
	OIDInt4        = 23
	OIDRegproc     = 24
	OIDText        = 25
	OIDOid         = 26
	OIDOidVector   = 30
	OIDFloat4      = 700
	OIDFloat8      = 701
	OIDUnknown     = 705
	OIDTextArray   = 1009
	OIDBPChar      = 1042
	OIDVarchar     = 1043
	OIDDate        = 1082
	OIDTimestamp   = 1114
	OIDTimestampTZ = 1184
	OIDNumeric     = 1700
	OIDRegclass    = 2205
	OIDRegtype     = 2206
)

// Type is a column or expression type: a PostgreSQL type OID and a type
// modifier (-1: none; varchar(n)/char(n): n+4; numeric(p,s): (p<<16|s)+4).
type Type struct {
	OID    uint32
	Typmod int32
}

// Common types.
var (
	TBool      = Type{OIDBool, -1}
	TInt2      = Type{OIDInt2, -1}
	TInt4      = Type{OIDInt4, -1}
	TInt8      = Type{OIDInt8, -1}
	TFloat4    = Type{OIDFloat4, -1}
	TFloat8    = Type{OIDFloat8, -1}
	TNumeric   = Type{OIDNumeric, -1}
	TText      = Type{OIDText, -1}
	TDate      = Type{OIDDate, -1}
	TTimestamp = Type{OIDTimestamp, -1}
	TOid       = Type{OIDOid, -1}
	TName      = Type{OIDName, -1}
	TUnknown   = Type{OIDUnknown, -1}
)

// KindOf returns the runtime kind of values of type oid.
func KindOf(oid uint32) Kind {
	switch oid {
	case OIDBool:
		return KBool
	case OIDInt2, OIDInt4, OIDInt8, OIDOid, OIDRegclass, OIDRegtype, OIDRegproc:
		return KInt
	case OIDFloat4, OIDFloat8:
		return KFloat
	case OIDNumeric:
		return KNumeric
	case OIDDate:
		return KDate
	case OIDTimestamp, OIDTimestampTZ:
		return KTimestamp
	case OIDBytea:
		return KBytes
	}
	return KText
}

// Kind returns the runtime kind of t's values.
func (t Type) Kind() Kind { return KindOf(t.OID) }

// Len returns the typlen PostgreSQL reports for t (-1: variable).
func (t Type) Len() int16 {
	switch t.OID {
	case OIDBool, OIDChar:
		return 1
	case OIDInt2:
		return 2
	case OIDInt4, OIDFloat4, OIDOid, OIDDate, OIDRegclass, OIDRegtype, OIDRegproc:
		return 4
	case OIDInt8, OIDFloat8, OIDTimestamp, OIDTimestampTZ:
		return 8
	case OIDName:
		return 64
	}
	return -1
}

// Name is the type's SQL name as format_type prints it.
func (t Type) Name() string {
	switch t.OID {
	case OIDBool:
		return "boolean"
	case OIDBytea:
		return "bytea"
	case OIDChar:
		return `"char"`
	case OIDName:
		return "name"
	case OIDInt2:
		return "smallint"
	case OIDInt4:
		return "integer"
	case OIDInt8:
		return "bigint"
	case OIDText:
		return "text"
	case OIDOid:
		return "oid"
	case OIDFloat4:
		return "real"
	case OIDFloat8:
		return "double precision"
	case OIDBPChar:
		if t.Typmod >= 4 {
			return fmt.Sprintf("character(%d)", t.Typmod-4)
		}
		return "character"
	case OIDVarchar:
		if t.Typmod >= 4 {
			return fmt.Sprintf("character varying(%d)", t.Typmod-4)
		}
		return "character varying"
	case OIDDate:
		return "date"
	case OIDTimestamp:
		return "timestamp without time zone"
	case OIDTimestampTZ:
		return "timestamp with time zone"
	case OIDNumeric:
		if t.Typmod >= 4 {
			m := t.Typmod - 4
			return fmt.Sprintf("numeric(%d,%d)", m>>16, m&0xffff)
		}
		return "numeric"
	case OIDRegclass:
		return "regclass"
	case OIDRegtype:
		return "regtype"
	case OIDUnknown:
		return "unknown"
	case OIDTextArray:
		return "text[]"
	}
	return fmt.Sprintf("oid%d", t.OID)
}

// TypName is the pg_type.typname of an OID.
func TypName(oid uint32) string {
	switch oid {
	case OIDBool:
		return "bool"
	case OIDInt2:
		return "int2"
	case OIDInt4:
		return "int4"
	case OIDInt8:
		return "int8"
	case OIDFloat4:
		return "float4"
	case OIDFloat8:
		return "float8"
	case OIDBPChar:
		return "bpchar"
	case OIDVarchar:
		return "varchar"
	case OIDTimestampTZ:
		return "timestamptz"
	}
	n := Type{OID: oid, Typmod: -1}.Name()
	return n
}

// KnownOIDs lists the types pg_type shows.
var KnownOIDs = []uint32{OIDBool, OIDBytea, OIDChar, OIDName, OIDInt8, OIDInt2, OIDInt4, OIDText, OIDOid,
	OIDFloat4, OIDFloat8, OIDUnknown, OIDBPChar, OIDVarchar, OIDDate, OIDTimestamp, OIDTimestampTZ,
	OIDNumeric, OIDRegclass, OIDRegtype, OIDTextArray}

// Error helpers.
func invalidText(typ string, s string) error {
	return sqlerr.New(sqlerr.InvalidText, "invalid input syntax for type %s: %q", typ, s)
}

func outOfRange(typ string) error {
	return sqlerr.New(sqlerr.NumericOutOfRange, "%s out of range", typ)
}

var decCtx = func() apd.Context {
	c := apd.BaseContext
	c.Precision = 60
	c.MaxExponent = 2000
	c.MinExponent = -2000
	c.Traps = apd.DefaultTraps
	return c
}()

// DecCtx is the arithmetic context for numeric values.
func DecCtx() *apd.Context { return &decCtx }

// ParseNumeric parses a decimal literal.
func ParseNumeric(s string) (*apd.Decimal, error) {
	d, _, err := apd.NewFromString(strings.TrimSpace(s))
	if err != nil || d.Form != apd.Finite {
		return nil, invalidText("numeric", s)
	}
	return d, nil
}

// NumericToFloat converts a decimal to float64.
func NumericToFloat(d *apd.Decimal) float64 {
	f, _ := d.Float64()
	return f
}

// AsFloat returns v (Int, Float or Numeric) as a float64.
func (v Value) AsFloat() float64 {
	switch v.K {
	case KInt:
		return float64(v.I)
	case KFloat:
		return v.F
	case KNumeric:
		return NumericToFloat(v.D)
	}
	return 0
}

// AsNumeric returns v (Int or Numeric) as a decimal.
func (v Value) AsNumeric() *apd.Decimal {
	switch v.K {
	case KInt:
		return apd.New(v.I, 0)
	case KNumeric:
		return v.D
	case KFloat:
		d, _ := new(apd.Decimal).SetFloat64(v.F)
		return d
	}
	return apd.New(0, 0)
}

const pgEpochDays = 10957 // 2000-01-01 - 1970-01-01

// ParseDate parses YYYY-MM-DD (and a few variants).
func ParseDate(s string) (int64, error) {
	s = strings.TrimSpace(s)
	for _, layout := range []string{"2006-01-02", "2006-1-2", "2006/01/02", "20060102", "2006-01-02 15:04:05", "2006-01-02T15:04:05Z07:00"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.Unix() / 86400, nil
		}
	}
	return 0, sqlerr.New(sqlerr.InvalidDatetime, "invalid input syntax for type date: %q", s)
}

// ParseTimestamp parses a timestamp literal into µs since the Unix epoch.
func ParseTimestamp(s string) (int64, error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "now":
		return time.Now().UnixMicro(), nil
	case "epoch":
		return 0, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07", "2006-01-02T15:04:05.999999999Z07:00", "2006-01-02 15:04", "2006-01-02", time.RFC3339Nano} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UnixMicro(), nil
		}
	}
	return 0, sqlerr.New(sqlerr.InvalidDatetime, "invalid input syntax for type timestamp: %q", s)
}

// FormatDate formats days since the Unix epoch.
func FormatDate(days int64) string {
	return time.Unix(days*86400, 0).UTC().Format("2006-01-02")
}

// FormatTimestamp formats µs since the Unix epoch as PostgreSQL does.
func FormatTimestamp(us int64, tz bool) string {
	t := time.UnixMicro(us).UTC()
	s := t.Format("2006-01-02 15:04:05.999999")
	if tz {
		s += "+00"
	}
	return s
}

// ParseBool parses PostgreSQL boolean literals.
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "t", "true", "yes", "y", "on", "1":
		return true, nil
	case "f", "false", "no", "n", "off", "0":
		return false, nil
	}
	return false, invalidText("boolean", s)
}

// FromText converts text (a literal or a text-format parameter) to a value of
// type t.
func FromText(s string, t Type) (Value, error) {
	switch t.OID {
	case OIDBool:
		b, err := ParseBool(s)
		return Bool(b), err
	case OIDInt2, OIDInt4, OIDInt8, OIDOid, OIDRegclass, OIDRegtype, OIDRegproc:
		i, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return Null, outOfRange(t.Name())
			}
			return Null, invalidText(t.Name(), s)
		}
		return checkIntRange(Int(i), t)
	case OIDFloat4, OIDFloat8:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return Null, invalidText(t.Name(), s)
		}
		return Float(f), nil
	case OIDNumeric:
		d, err := ParseNumeric(s)
		if err != nil {
			return Null, err
		}
		return roundNumeric(Numeric(d), t)
	case OIDDate:
		d, err := ParseDate(s)
		return Date(d), err
	case OIDTimestamp, OIDTimestampTZ:
		us, err := ParseTimestamp(s)
		return Timestamp(us), err
	case OIDBytea:
		if strings.HasPrefix(s, `\x`) {
			b := make([]byte, 0, len(s)/2)
			for i := 2; i+1 < len(s); i += 2 {
				x, err := strconv.ParseUint(s[i:i+2], 16, 8)
				if err != nil {
					return Null, invalidText("bytea", s)
				}
				b = append(b, byte(x))
			}
			return Value{K: KBytes, S: string(b)}, nil
		}
		return Value{K: KBytes, S: s}, nil
	case OIDBPChar, OIDVarchar:
		return fitString(s, t)
	}
	return Text(s), nil
}

func checkIntRange(v Value, t Type) (Value, error) {
	switch t.OID {
	case OIDInt2:
		if v.I < math.MinInt16 || v.I > math.MaxInt16 {
			return Null, outOfRange("smallint")
		}
	case OIDInt4:
		if v.I < math.MinInt32 || v.I > math.MaxInt32 {
			return Null, outOfRange("integer")
		}
	}
	return v, nil
}

func fitString(s string, t Type) (Value, error) {
	if t.Typmod < 4 {
		return Text(s), nil
	}
	n := int(t.Typmod - 4)
	runes := []rune(s)
	if len(runes) > n {
		// Trailing spaces may be cut, as in PostgreSQL.
		if strings.TrimRight(string(runes[n:]), " ") != "" {
			return Null, sqlerr.New(sqlerr.StringTruncation, "value too long for type %s", t.Name())
		}
		runes = runes[:n]
		s = string(runes)
	}
	if t.OID == OIDBPChar && len(runes) < n {
		s += strings.Repeat(" ", n-len(runes))
	}
	return Text(s), nil
}

func roundNumeric(v Value, t Type) (Value, error) {
	if t.Typmod < 4 {
		return v, nil
	}
	m := t.Typmod - 4
	prec, scale := int64(m>>16), int32(m&0xffff)
	d := new(apd.Decimal)
	c := decCtx
	c.Rounding = apd.RoundHalfUp
	if _, err := c.Quantize(d, v.D, -scale); err != nil {
		return Null, sqlerr.New(sqlerr.NumericOutOfRange, "numeric field overflow")
	}
	if !d.IsZero() && d.NumDigits()+int64(d.Exponent) > prec-int64(scale) {
		return Null, sqlerr.New(sqlerr.NumericOutOfRange, "numeric field overflow")
	}
	return Numeric(d), nil
}

// Cast converts v to type t with PostgreSQL's assignment/explicit cast
// rules (close enough for the types CumulusDB has).
func Cast(v Value, t Type) (Value, error) {
	if v.K == KNull {
		return Null, nil
	}
	target := t.Kind()
	switch target {
	case KText:
		if v.K == KText {
			if t.OID == OIDBPChar || t.OID == OIDVarchar {
				return fitString(v.S, t)
			}
			return v, nil
		}
		return fitString(v.String(), t)
	case KInt:
		switch v.K {
		case KInt:
			return checkIntRange(v, t)
		case KFloat:
			if math.IsNaN(v.F) || v.F > math.MaxInt64 || v.F < math.MinInt64 {
				return Null, outOfRange(t.Name())
			}
			return checkIntRange(Int(int64(math.RoundToEven(v.F))), t)
		case KNumeric:
			d := new(apd.Decimal)
			c := decCtx
			c.Rounding = apd.RoundHalfUp
			if _, err := c.RoundToIntegralValue(d, v.D); err != nil {
				return Null, outOfRange(t.Name())
			}
			i, err := d.Int64()
			if err != nil {
				return Null, outOfRange(t.Name())
			}
			return checkIntRange(Int(i), t)
		case KBool:
			return Int(v.I), nil
		case KText:
			return FromText(v.S, t)
		}
	case KFloat:
		switch v.K {
		case KInt, KFloat, KNumeric:
			f := v.AsFloat()
			if t.OID == OIDFloat4 {
				f = float64(float32(f))
			}
			return Float(f), nil
		case KText:
			return FromText(v.S, t)
		}
	case KNumeric:
		switch v.K {
		case KInt, KNumeric:
			return roundNumeric(Numeric(v.AsNumeric()), t)
		case KFloat:
			if math.IsNaN(v.F) || math.IsInf(v.F, 0) {
				return Null, outOfRange("numeric")
			}
			d, err := ParseNumeric(strconv.FormatFloat(v.F, 'f', -1, 64))
			if err != nil {
				return Null, err
			}
			return roundNumeric(Numeric(d), t)
		case KText:
			return FromText(v.S, t)
		}
	case KBool:
		switch v.K {
		case KBool:
			return v, nil
		case KInt:
			return Bool(v.I != 0), nil
		case KText:
			return FromText(v.S, t)
		}
	case KDate:
		switch v.K {
		case KDate:
			return v, nil
		case KTimestamp:
			return Date(floorDiv(v.I, 86400e6)), nil
		case KText:
			return FromText(v.S, t)
		}
	case KTimestamp:
		switch v.K {
		case KTimestamp:
			return v, nil
		case KDate:
			return Timestamp(v.I * 86400e6), nil
		case KText:
			return FromText(v.S, t)
		}
	case KBytes:
		if v.K == KText || v.K == KBytes {
			return Value{K: KBytes, S: v.S}, nil
		}
	}
	return Null, sqlerr.New(sqlerr.DatatypeMismatch, "cannot cast %s to %s", v.KindName(), t.Name())
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// KindName names v's kind for error messages.
func (v Value) KindName() string {
	switch v.K {
	case KNull:
		return "unknown"
	case KBool:
		return "boolean"
	case KInt:
		return "bigint"
	case KFloat:
		return "double precision"
	case KNumeric:
		return "numeric"
	case KText:
		return "text"
	case KDate:
		return "date"
	case KTimestamp:
		return "timestamp without time zone"
	case KBytes:
		return "bytea"
	}
	return "?"
}

// DefaultType returns the type of a value of kind k when nothing else is
// known.
func DefaultType(k Kind) Type {
	switch k {
	case KBool:
		return TBool
	case KInt:
		return TInt8
	case KFloat:
		return TFloat8
	case KNumeric:
		return TNumeric
	case KDate:
		return TDate
	case KTimestamp:
		return TTimestamp
	case KBytes:
		return Type{OIDBytea, -1}
	}
	return TText
}

// String formats v in PostgreSQL's text output format (NULL: "").
func (v Value) String() string {
	switch v.K {
	case KNull:
		return ""
	case KBool:
		if v.I != 0 {
			return "t"
		}
		return "f"
	case KInt:
		return strconv.FormatInt(v.I, 10)
	case KFloat:
		return formatFloat(v.F)
	case KNumeric:
		return v.D.Text('f')
	case KText:
		return v.S
	case KDate:
		return FormatDate(v.I)
	case KTimestamp:
		return FormatTimestamp(v.I, false)
	case KBytes:
		const hex = "0123456789abcdef"
		b := make([]byte, 2, 2+2*len(v.S))
		b[0], b[1] = '\\', 'x'
		for i := 0; i < len(v.S); i++ {
			b = append(b, hex[v.S[i]>>4], hex[v.S[i]&15])
		}
		return string(b)
	}
	return "?"
}

func formatFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case math.IsNaN(f):
		return "NaN"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// Compare orders two non-NULL values. Numbers compare across kinds; other
// mixed kinds compare by their text forms.
func Compare(a, b Value) int {
	if a.K == b.K {
		switch a.K {
		case KInt, KDate, KTimestamp, KBool:
			return cmpInt(a.I, b.I)
		case KFloat:
			return cmpFloat(a.F, b.F)
		case KText, KBytes:
			return strings.Compare(a.S, b.S)
		case KNumeric:
			return a.D.Cmp(b.D)
		case KNull:
			return 0
		}
	}
	if isNum(a.K) && isNum(b.K) {
		if a.K == KFloat || b.K == KFloat {
			return cmpFloat(a.AsFloat(), b.AsFloat())
		}
		return a.AsNumeric().Cmp(b.AsNumeric())
	}
	if a.K == KDate && b.K == KTimestamp {
		return cmpInt(a.I*86400e6, b.I)
	}
	if a.K == KTimestamp && b.K == KDate {
		return cmpInt(a.I, b.I*86400e6)
	}
	return strings.Compare(a.String(), b.String())
}

func isNum(k Kind) bool { return k == KInt || k == KFloat || k == KNumeric }

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	case a == b:
		return 0
	case math.IsNaN(a) && math.IsNaN(b):
		return 0
	case math.IsNaN(a):
		return 1
	}
	return -1
}
