package datum

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"

	"github.com/cockroachdb/apd"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// ErrCorrupt reports a stored row or key that does not decode.
var ErrCorrupt = errors.New("datum: corrupt encoding")

// AppendRow appends the row encoding of vals: per value a kind byte and
// its payload (varint integers, 8-byte floats, length-prefixed strings,
// numerics as text).
func AppendRow(b []byte, vals []Value) []byte {
	b = binary.AppendUvarint(b, uint64(len(vals)))
	for _, v := range vals {
		b = append(b, byte(v.K))
		switch v.K {
		case KBool, KInt, KDate, KTimestamp:
			b = binary.AppendVarint(b, v.I)
		case KFloat:
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v.F))
		case KText, KBytes:
			b = binary.AppendUvarint(b, uint64(len(v.S)))
			b = append(b, v.S...)
		case KNumeric:
			s := v.D.Text('f')
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// DecodeRow decodes a row written by AppendRow into dst (resized to n
// values; missing trailing values are NULL, extra ones are dropped).
func DecodeRow(b []byte, dst []Value, n int) ([]Value, error) {
	cnt, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, ErrCorrupt
	}
	b = b[k:]
	if cap(dst) < n {
		dst = make([]Value, n)
	}
	dst = dst[:n]
	for i := range dst {
		dst[i] = Null
	}
	for i := 0; i < int(cnt); i++ {
		if len(b) == 0 {
			return nil, ErrCorrupt
		}
		kind := Kind(b[0])
		b = b[1:]
		var v Value
		v.K = kind
		switch kind {
		case KNull:
		case KBool, KInt, KDate, KTimestamp:
			x, k := binary.Varint(b)
			if k <= 0 {
				return nil, ErrCorrupt
			}
			v.I, b = x, b[k:]
		case KFloat:
			if len(b) < 8 {
				return nil, ErrCorrupt
			}
			v.F, b = math.Float64frombits(binary.LittleEndian.Uint64(b)), b[8:]
		case KText, KBytes, KNumeric:
			l, k := binary.Uvarint(b)
			if k <= 0 || uint64(len(b)-k) < l {
				return nil, ErrCorrupt
			}
			s := string(b[k : k+int(l)])
			b = b[k+int(l):]
			if kind == KNumeric {
				d, _, err := apd.NewFromString(s)
				if err != nil {
					return nil, ErrCorrupt
				}
				v.D = d
			} else {
				v.S = s
			}
		default:
			return nil, ErrCorrupt
		}
		if i < n {
			dst[i] = v
		}
	}
	return dst, nil
}

// AppendKey appends an order-preserving encoding of v: byte-wise order of
// encodings matches Compare for values of one kind, NULLs first.
func AppendKey(b []byte, v Value) []byte {
	if v.K == KNull {
		return append(b, 0x00)
	}
	switch v.K {
	case KBool, KInt, KDate, KTimestamp:
		b = append(b, 0x10)
		return binary.BigEndian.AppendUint64(b, uint64(v.I)^(1<<63))
	case KFloat:
		b = append(b, 0x10)
		return appendFloatKey(b, v.F)
	case KNumeric:
		// Numbers share one ordering: the float value, then the exact
		// decimal text to keep distinct values distinct.
		b = append(b, 0x10)
		b = appendFloatKey(b, v.AsFloat())
		return appendStringKey(b, v.D.Text('f'))
	case KText, KBytes:
		b = append(b, 0x20)
		return appendStringKey(b, v.S)
	}
	return b
}

func appendFloatKey(b []byte, f float64) []byte {
	u := math.Float64bits(f)
	if f < 0 || (f == 0 && math.Signbit(f)) {
		u = ^u
	} else {
		u |= 1 << 63
	}
	if f == 0 {
		u = 1 << 63
	}
	return binary.BigEndian.AppendUint64(b, u)
}

// Strings: 0x00 escaped as 0x00 0xff, terminated by 0x00 0x01.
func appendStringKey(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			b = append(b, 0, 0xff)
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, 0, 1)
}

// PrefixEnd returns the smallest key greater than every key with prefix p
// (nil if there is none).
func PrefixEnd(p []byte) []byte {
	e := append([]byte(nil), p...)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] != 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	return nil
}

// ---- wire formats ----

// AppendText appends v's text format for a column of type t.
func AppendText(b []byte, v Value, t Type) []byte {
	if t.OID == OIDTimestampTZ && v.K == KTimestamp {
		return append(b, FormatTimestamp(v.I, true)...)
	}
	if v.K == KFloat && t.OID == OIDFloat4 {
		return append(b, formatFloat(float64(float32(v.F)))...)
	}
	return append(b, v.String()...)
}

// HasBinary reports whether CumulusDB can send type oid in binary format.
func HasBinary(oid uint32) bool {
	switch oid {
	case OIDBool, OIDInt2, OIDInt4, OIDInt8, OIDOid, OIDFloat4, OIDFloat8, OIDText, OIDVarchar,
		OIDBPChar, OIDName, OIDDate, OIDTimestamp, OIDTimestampTZ, OIDNumeric, OIDBytea, OIDRegclass:
		return true
	}
	return false
}

const usPerPGEpoch = pgEpochDays * 86400e6

// AppendBinary appends v's binary format for type t.
func AppendBinary(b []byte, v Value, t Type) ([]byte, error) {
	v, err := Cast(v, Type{OID: t.OID, Typmod: -1})
	if err != nil {
		return nil, err
	}
	switch t.OID {
	case OIDBool:
		return append(b, byte(v.I)), nil
	case OIDInt2:
		return binary.BigEndian.AppendUint16(b, uint16(v.I)), nil
	case OIDInt4, OIDOid, OIDRegclass:
		return binary.BigEndian.AppendUint32(b, uint32(v.I)), nil
	case OIDInt8:
		return binary.BigEndian.AppendUint64(b, uint64(v.I)), nil
	case OIDFloat4:
		return binary.BigEndian.AppendUint32(b, math.Float32bits(float32(v.F))), nil
	case OIDFloat8:
		return binary.BigEndian.AppendUint64(b, math.Float64bits(v.F)), nil
	case OIDDate:
		return binary.BigEndian.AppendUint32(b, uint32(int32(v.I-pgEpochDays))), nil
	case OIDTimestamp, OIDTimestampTZ:
		return binary.BigEndian.AppendUint64(b, uint64(v.I-usPerPGEpoch)), nil
	case OIDNumeric:
		return appendNumericBinary(b, v.D), nil
	}
	return append(b, v.S...), nil
}

// FromBinary decodes a binary-format parameter of type t.
func FromBinary(p []byte, t Type) (Value, error) {
	need := func(n int) error {
		if len(p) != n {
			return sqlerr.New(sqlerr.ProtocolViolation, "incorrect binary data format for type %s: %d bytes", t.Name(), len(p))
		}
		return nil
	}
	switch t.OID {
	case OIDBool:
		if err := need(1); err != nil {
			return Null, err
		}
		return Bool(p[0] != 0), nil
	case OIDInt2:
		if err := need(2); err != nil {
			return Null, err
		}
		return Int(int64(int16(binary.BigEndian.Uint16(p)))), nil
	case OIDInt4:
		if err := need(4); err != nil {
			return Null, err
		}
		return Int(int64(int32(binary.BigEndian.Uint32(p)))), nil
	case OIDOid, OIDRegclass:
		if err := need(4); err != nil {
			return Null, err
		}
		return Int(int64(binary.BigEndian.Uint32(p))), nil
	case OIDInt8:
		if err := need(8); err != nil {
			return Null, err
		}
		return Int(int64(binary.BigEndian.Uint64(p))), nil
	case OIDFloat4:
		if err := need(4); err != nil {
			return Null, err
		}
		return Float(float64(math.Float32frombits(binary.BigEndian.Uint32(p)))), nil
	case OIDFloat8:
		if err := need(8); err != nil {
			return Null, err
		}
		return Float(math.Float64frombits(binary.BigEndian.Uint64(p))), nil
	case OIDDate:
		if err := need(4); err != nil {
			return Null, err
		}
		return Date(int64(int32(binary.BigEndian.Uint32(p))) + pgEpochDays), nil
	case OIDTimestamp, OIDTimestampTZ:
		if err := need(8); err != nil {
			return Null, err
		}
		return Timestamp(int64(binary.BigEndian.Uint64(p)) + usPerPGEpoch), nil
	case OIDNumeric:
		d, err := decodeNumericBinary(p)
		if err != nil {
			return Null, err
		}
		return Numeric(d), nil
	case OIDBytea:
		return Value{K: KBytes, S: string(p)}, nil
	}
	return FromText(string(p), t)
}

// PostgreSQL's numeric binary format: ndigits, weight, sign, dscale, then
// base-10000 digits.
func appendNumericBinary(b []byte, d *apd.Decimal) []byte {
	s := d.Text('f')
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(s, ".")
	dscale := len(frac)
	intPart = strings.TrimLeft(intPart, "0")
	// Pad the integer part to a multiple of 4 on the left, the fraction on
	// the right.
	if r := len(intPart) % 4; r != 0 {
		intPart = strings.Repeat("0", 4-r) + intPart
	}
	if r := len(frac) % 4; r != 0 {
		frac += strings.Repeat("0", 4-r)
	}
	var digits []uint16
	for i := 0; i < len(intPart); i += 4 {
		digits = append(digits, atoi4(intPart[i:i+4]))
	}
	weight := len(digits) - 1
	for i := 0; i < len(frac); i += 4 {
		digits = append(digits, atoi4(frac[i:i+4]))
	}
	// Strip leading zero digits (adjusting weight) and trailing zeros.
	for len(digits) > 0 && digits[0] == 0 {
		digits = digits[1:]
		weight--
	}
	for len(digits) > 0 && digits[len(digits)-1] == 0 {
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 {
		weight = 0
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(digits)))
	b = binary.BigEndian.AppendUint16(b, uint16(int16(weight)))
	sign := uint16(0)
	if neg && len(digits) > 0 {
		sign = 0x4000
	}
	b = binary.BigEndian.AppendUint16(b, sign)
	b = binary.BigEndian.AppendUint16(b, uint16(dscale))
	for _, x := range digits {
		b = binary.BigEndian.AppendUint16(b, x)
	}
	return b
}

func atoi4(s string) uint16 {
	var x uint16
	for i := 0; i < len(s); i++ {
		x = x*10 + uint16(s[i]-'0')
	}
	return x
}

func decodeNumericBinary(p []byte) (*apd.Decimal, error) {
	if len(p) < 8 {
		return nil, sqlerr.New(sqlerr.ProtocolViolation, "invalid binary numeric")
	}
	n := int(binary.BigEndian.Uint16(p))
	weight := int(int16(binary.BigEndian.Uint16(p[2:])))
	sign := binary.BigEndian.Uint16(p[4:])
	dscale := int(binary.BigEndian.Uint16(p[6:]))
	if len(p) != 8+2*n || sign == 0xC000 || dscale > 2000 || weight > 2000 || weight < -2000 {
		return nil, sqlerr.New(sqlerr.ProtocolViolation, "invalid binary numeric")
	}
	coeff := new(big.Int)
	ten4 := big.NewInt(10000)
	for i := 0; i < n; i++ {
		coeff.Mul(coeff, ten4)
		coeff.Add(coeff, big.NewInt(int64(binary.BigEndian.Uint16(p[8+2*i:]))))
	}
	// value = coeff * 10000^(weight-n+1)
	exp := int32(4 * (weight - n + 1))
	d := apd.NewWithBigInt(coeff, exp)
	if sign == 0x4000 {
		d.Negative = true
	}
	out := new(apd.Decimal)
	if _, err := decCtx.Quantize(out, d, -int32(dscale)); err != nil {
		return nil, fmt.Errorf("datum: numeric: %w", err)
	}
	return out, nil
}
