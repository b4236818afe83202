package datum

import (
	"bytes"
	"math"
	"sort"
	"testing"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

func TestKeyOrderMatchesCompare(t *testing.T) {
	vals := []Value{Int(math.MinInt64), Int(-5), Int(0), Int(3), Int(math.MaxInt64)}
	texts := []Value{Text(""), Text("a"), Text("a\x00b"), Text("ab"), Text("b")}
	floats := []Value{Float(math.Inf(-1)), Float(-2.5), Float(0), Float(1e-9), Float(7)}
	for _, set := range [][]Value{vals, texts, floats} {
		keys := make([][]byte, len(set))
		for i, v := range set {
			keys[i] = AppendKey(nil, v)
		}
		if !sort.SliceIsSorted(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 }) {
			t.Fatalf("keys of %v are not ordered", set)
		}
		for i := 1; i < len(set); i++ {
			if Compare(set[i-1], set[i]) >= 0 {
				t.Fatalf("Compare(%v, %v) >= 0", set[i-1], set[i])
			}
		}
	}
	if bytes.Compare(AppendKey(nil, Null), AppendKey(nil, Int(math.MinInt64))) >= 0 {
		t.Fatal("NULL must sort first")
	}
}

func TestRowRoundTrip(t *testing.T) {
	d, _ := ParseNumeric("-12.50")
	row := []Value{Int(-7), Null, Text("héllo"), Float(2.5), Numeric(d), Bool(true), Date(19000), Timestamp(1700000000123456)}
	enc := AppendRow(nil, row)
	got, err := DecodeRow(enc, nil, len(row)+1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range row {
		if row[i].IsNull() != got[i].IsNull() || (!row[i].IsNull() && Compare(row[i], got[i]) != 0) {
			t.Fatalf("value %d: %v != %v", i, row[i], got[i])
		}
	}
	if !got[len(row)].IsNull() {
		t.Fatal("missing trailing column must read as NULL")
	}
	if _, err := DecodeRow(enc[:len(enc)-3], nil, len(row)); err == nil {
		t.Fatal("truncated row decoded")
	}
}

func TestCastsAndErrors(t *testing.T) {
	v, err := Cast(Text("42"), TInt4)
	if err != nil || v.I != 42 {
		t.Fatalf("'42'::int4 = %v, %v", v, err)
	}
	if _, err := Cast(Text("x"), TInt4); sqlerr.Code(err) != sqlerr.InvalidText {
		t.Fatalf("'x'::int4: %v", err)
	}
	if _, err := Cast(Int(1<<40), TInt4); sqlerr.Code(err) != sqlerr.NumericOutOfRange {
		t.Fatalf("2^40::int4: %v", err)
	}
	if _, err := Cast(Text("abcdef"), Type{OIDVarchar, 3 + 4}); sqlerr.Code(err) != sqlerr.StringTruncation {
		t.Fatalf("varchar(3): %v", err)
	}
	v, _ = Cast(Text("ab"), Type{OIDBPChar, 4 + 4})
	if v.S != "ab  " {
		t.Fatalf("char(4) = %q", v.S)
	}
	v, err = Cast(Text("3.14159"), Type{OIDNumeric, (10<<16 | 2) + 4})
	if err != nil || v.String() != "3.14" {
		t.Fatalf("numeric(10,2) = %v, %v", v, err)
	}
	if _, err := Cast(Text("123456"), Type{OIDNumeric, (4<<16 | 2) + 4}); sqlerr.Code(err) != sqlerr.NumericOutOfRange {
		t.Fatalf("numeric(4,2) overflow: %v", err)
	}
	v, _ = Cast(Text("2024-02-29 12:34:56.5"), TTimestamp)
	if v.String() != "2024-02-29 12:34:56.5" {
		t.Fatalf("timestamp = %s", v)
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	for _, s := range []string{"0", "1", "-1", "12345.678", "0.0001", "-98765432109876.54321", "10000", "100000000"} {
		d, _ := ParseNumeric(s)
		b, err := AppendBinary(nil, Numeric(d), TNumeric)
		if err != nil {
			t.Fatal(err)
		}
		v, err := FromBinary(b, TNumeric)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if v.D.Cmp(d) != 0 || v.String() != d.Text('f') {
			t.Fatalf("numeric %s came back as %s", s, v)
		}
	}
	for _, c := range []struct {
		v Value
		t Type
	}{{Int(-3), TInt2}, {Int(1 << 30), TInt4}, {Int(-1 << 50), TInt8}, {Float(1.5), TFloat8}, {Bool(true), TBool}, {Date(-3), TDate}, {Timestamp(12345678), TTimestamp}} {
		b, err := AppendBinary(nil, c.v, c.t)
		if err != nil {
			t.Fatal(err)
		}
		v, err := FromBinary(b, c.t)
		if err != nil || Compare(v, c.v) != 0 {
			t.Fatalf("%v as %s: got %v, %v", c.v, c.t.Name(), v, err)
		}
	}
	if _, err := FromBinary([]byte{1, 2, 3}, TInt4); err == nil {
		t.Fatal("short int4 accepted")
	}
}
