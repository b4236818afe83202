package exec

import (
	"strconv"
	"strings"

	"github.com/cumulusdb/cumulus/db/sql/datum"
)

// Simple-protocol statements that differ only in their constants (what
// pgbench and most ORMs without prepared statements send) are parsed and
// planned once per session: the statement's numeric and quoted-string
// constants are replaced by parameters ($1, $2, …), the resulting
// template is parsed and planned like an extended-protocol statement, and
// later statements with the same shape execute the template with their
// constants as arguments. Parsing was a quarter of the server's CPU time
// under pgbench.
//
// A template is used only where it means what the literal statement means:
//   - every parameter's type was inferred from context (a constant in a
//     select list, whose type would come from the literal, is not), and a
//     numeric constant's parameter has a numeric type;
//   - each execution's constants convert to those types (an integer too
//     large for an int4 column arithmetic, or 1.5 where the template
//     inferred an integer, falls back to the full parse, which handles it
//     as PostgreSQL would);
//   - quoted strings are untyped in PostgreSQL, exactly as parameters are.
//
// Statements with comments, dollar quotes, prefixed strings (E'', B'',
// X'', U&''), existing parameters or several statements are not
// templated. After DDL a shape is templated afresh: its parameters' types
// may have changed with the tables.

// templateCacheSize bounds the per-session cache; it is cleared when full.
const templateCacheSize = 256

type template struct {
	p       *Prepared // nil: the shape was tried and cannot be templated
	numeric []bool    // per parameter: the constant was a number
	version uint64    // catalog version it was made at (DDL may change the answer)
}

// constant is one literal cut out of a statement.
type constant struct {
	text    string
	numeric bool
}

// shape replaces the constants of sql by $1, $2, … It returns ok false
// for statements that are not templated (see above).
func shape(sql string) (masked string, consts []constant, ok bool) {
	sql = strings.TrimRight(sql, " \t\r\n;")
	verb := strings.TrimLeft(sql, " \t\r\n(")
	for i := 0; i < len(verb); i++ {
		if c := verb[i] | 0x20; c < 'a' || c > 'z' {
			verb = verb[:i]
			break
		}
	}
	switch strings.ToLower(verb) {
	case "select", "insert", "update", "delete":
	default:
		return "", nil, false // DDL, utility statements: parsed as they come
	}
	var b strings.Builder
	b.Grow(len(sql) + 8)
	identChar := func(c byte) bool {
		return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
	}
	var num [20]byte
	param := func() {
		b.WriteByte('$')
		b.Write(strconv.AppendInt(num[:0], int64(len(consts)), 10))
	}
	for i := 0; i < len(sql); {
		c := sql[i]
		prevIdent := i > 0 && identChar(sql[i-1])
		switch {
		case c == ';' || c == '$':
			return "", nil, false
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-', c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			return "", nil, false
		case c == '\'':
			if prevIdent {
				return "", nil, false // E'', B'', X'', U&'' and friends
			}
			var lit strings.Builder
			j := i + 1
			for {
				if j >= len(sql) {
					return "", nil, false // unterminated: let the parser report it
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						lit.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				lit.WriteByte(sql[j])
				j++
			}
			if j+1 < len(sql) && sql[j+1] == '\'' {
				return "", nil, false
			}
			consts = append(consts, constant{text: lit.String()})
			param()
			i = j + 1
		case c == '"':
			j := strings.IndexByte(sql[i+1:], '"')
			if j < 0 {
				return "", nil, false
			}
			b.WriteString(sql[i : i+j+2])
			i += j + 2
		case !prevIdent && (c >= '0' && c <= '9' || c == '.' && i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9'):
			j := i
			for j < len(sql) && (sql[j] >= '0' && sql[j] <= '9' || sql[j] == '.') {
				j++
			}
			if j < len(sql) && (sql[j] == 'e' || sql[j] == 'E') {
				k := j + 1
				if k < len(sql) && (sql[k] == '+' || sql[k] == '-') {
					k++
				}
				if k < len(sql) && sql[k] >= '0' && sql[k] <= '9' {
					for k < len(sql) && sql[k] >= '0' && sql[k] <= '9' {
						k++
					}
					j = k
				}
			}
			if j < len(sql) && identChar(sql[j]) {
				return "", nil, false // 1abc: leave odd tokens to the parser
			}
			consts = append(consts, constant{text: sql[i:j], numeric: true})
			param()
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	if len(consts) == 0 {
		return "", nil, false // nothing to gain: the plain path parses it once
	}
	return b.String(), consts, true
}

// templated returns the statement as its session template with this
// statement's constants as arguments, or ok false to take the plain path.
func (s *Session) templated(sql string) (p *Prepared, args []datum.Value, ok bool) {
	masked, consts, ok := shape(sql)
	if !ok {
		return nil, nil, false
	}
	t, hit := s.templates[masked]
	if hit && t.version != s.eng.Cat.Version() {
		hit = false // DDL since: the parameters' types may have changed too
	}
	if !hit {
		t = s.makeTemplate(masked, consts)
		if len(s.templates) >= templateCacheSize {
			clear(s.templates)
		}
		if s.templates == nil {
			s.templates = map[string]*template{}
		}
		s.templates[masked] = t
	}
	if t.p == nil || len(t.numeric) != len(consts) {
		return nil, nil, false
	}
	args = make([]datum.Value, len(consts))
	for i, c := range consts {
		if c.numeric != t.numeric[i] {
			return nil, nil, false
		}
		v, err := datum.FromText(c.text, t.p.ParamTypes[i])
		if err != nil {
			return nil, nil, false
		}
		args[i] = v
	}
	return t.p, args, true
}

// makeTemplate parses and plans the masked statement and decides whether
// it may stand for its literal versions.
func (s *Session) makeTemplate(masked string, consts []constant) *template {
	no := &template{version: s.eng.Cat.Version()}
	st, err := s.parser.ParseOne(masked)
	if err != nil || st.AST == nil || st.Own != nil || !plannable(st.AST) || st.NumPlaceholders != len(consts) {
		return no
	}
	p := &Prepared{Stmt: st, ParamTypes: make([]datum.Type, len(consts))}
	if err := s.withReadTx(func() error { return s.planPrepared(p) }); err != nil {
		return no
	}
	t := &template{p: p, numeric: make([]bool, len(consts)), version: no.version}
	for i, c := range consts {
		k := p.ParamTypes[i].Kind()
		if p.ParamTypes[i].OID == 0 || c.numeric && k != datum.KInt && k != datum.KFloat && k != datum.KNumeric {
			return no
		}
		t.numeric[i] = c.numeric
	}
	return t
}
