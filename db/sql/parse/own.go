package parse

import (
	"strings"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

type tokKind int

const (
	tWord tokKind = iota
	tQuotedIdent
	tString
	tNumber
	tPunct
)

type token struct {
	kind tokKind
	s    string // words lower-cased; strings unescaped
}

func tokenize(sql string) ([]token, error) {
	sql = stripComments(sql)
	var toks []token
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '\'' || ((c == 'E' || c == 'e') && i+1 < len(sql) && sql[i+1] == '\''):
			esc := c != '\''
			if esc {
				i++
			}
			j := skipQuoted(sql, i, '\'')
			if j > len(sql) || sql[j-1] != '\'' || j == i+1 {
				return nil, sqlerr.New(sqlerr.SyntaxError, "unterminated quoted string")
			}
			s := strings.ReplaceAll(sql[i+1:j-1], "''", "'")
			if esc {
				s = unescapeE(s)
			}
			toks = append(toks, token{tString, s})
			i = j
		case c == '"':
			j := skipQuoted(sql, i, '"')
			if j > len(sql) || sql[j-1] != '"' || j == i+1 {
				return nil, sqlerr.New(sqlerr.SyntaxError, "unterminated quoted identifier")
			}
			toks = append(toks, token{tQuotedIdent, strings.ReplaceAll(sql[i+1:j-1], `""`, `"`)})
			i = j
		case isDigit(c) || (c == '-' || c == '.') && i+1 < len(sql) && isDigit(sql[i+1]):
			j := i + 1
			for j < len(sql) && (isDigit(sql[j]) || sql[j] == '.' || sql[j] == 'e' || sql[j] == 'E') {
				j++
			}
			toks = append(toks, token{tNumber, sql[i:j]})
			i = j
		case isIdent(c):
			j := i
			for j < len(sql) && (isIdent(sql[j]) || sql[j] == '$') {
				j++
			}
			toks = append(toks, token{tWord, strings.ToLower(sql[i:j])})
			i = j
		default:
			toks = append(toks, token{tPunct, string(c)})
			i++
		}
	}
	return toks, nil
}

func unescapeE(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			default:
				b.WriteByte(s[i])
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

type tokens struct {
	t []token
	i int
}

func (ts *tokens) peek() token {
	if ts.i < len(ts.t) {
		return ts.t[ts.i]
	}
	return token{kind: tPunct, s: ""}
}

func (ts *tokens) next() token {
	t := ts.peek()
	if ts.i < len(ts.t) {
		ts.i++
	}
	return t
}

func (ts *tokens) done() bool { return ts.i >= len(ts.t) }

func (ts *tokens) word(w string) bool {
	if t := ts.peek(); t.kind == tWord && t.s == w {
		ts.i++
		return true
	}
	return false
}

func (ts *tokens) punct(p string) bool {
	if t := ts.peek(); t.kind == tPunct && t.s == p {
		ts.i++
		return true
	}
	return false
}

// name reads an identifier, possibly schema-qualified (the schema is
// dropped).
func (ts *tokens) name() (string, bool) {
	t := ts.peek()
	if t.kind != tWord && t.kind != tQuotedIdent {
		return "", false
	}
	ts.i++
	s := t.s
	if ts.punct(".") {
		t2 := ts.next()
		if t2.kind != tWord && t2.kind != tQuotedIdent {
			return "", false
		}
		s = t2.s
	}
	return s, true
}

func syntaxErr(sql string) error {
	return sqlerr.New(sqlerr.SyntaxError, "syntax error in %q", trunc(strings.TrimSpace(sql)))
}

// parseOwn parses the statements this package handles itself.
func parseOwn(sql string) (any, bool, error) {
	toks, err := tokenize(sql)
	if err != nil || len(toks) == 0 || toks[0].kind != tWord {
		return nil, false, nil // let the SQL parser report it
	}
	ts := &tokens{t: toks}
	switch toks[0].s {
	case "copy":
		ts.next()
		c, err := parseCopy(ts)
		if err != nil {
			return nil, true, sqlerr.New(sqlerr.SyntaxError, "COPY: %v", err)
		}
		return c, true, nil
	case "vacuum", "analyze", "analyse", "checkpoint":
		verb := strings.ToUpper(ts.next().s)
		if verb == "ANALYSE" {
			verb = "ANALYZE"
		}
		v := Vacuum{Verb: verb}
		for !ts.done() {
			t := ts.next()
			if t.kind == tWord || t.kind == tQuotedIdent {
				switch t.s {
				case "full", "freeze", "verbose", "analyze", "analyse":
					continue
				}
				v.Tables = append(v.Tables, t.s)
			}
		}
		return v, true, nil
	case "set":
		ts.next()
		return parseSet(ts, sql)
	case "show":
		ts.next()
		var parts []string
		for !ts.done() {
			parts = append(parts, ts.next().s)
		}
		name := strings.Join(parts, " ")
		if name == "time zone" {
			name = "timezone"
		}
		if name == "transaction isolation level" {
			name = "transaction_isolation"
		}
		if name == "" {
			return nil, true, syntaxErr(sql)
		}
		return Show{Name: name}, true, nil
	case "reset":
		ts.next()
		n, ok := ts.name()
		if !ok {
			return nil, true, syntaxErr(sql)
		}
		return Reset{Name: n}, true, nil
	case "discard":
		return Ignored{Tag: "DISCARD " + strings.ToUpper(toks[len(toks)-1].s)}, true, nil
	case "listen", "unlisten", "notify":
		return Ignored{Tag: strings.ToUpper(toks[0].s)}, true, nil
	case "deallocate":
		ts.next()
		ts.word("prepare")
		n, ok := ts.name()
		if !ok {
			return nil, true, syntaxErr(sql)
		}
		return Deallocate{Name: n}, true, nil
	}
	return nil, false, nil
}

func parseSet(ts *tokens, sql string) (any, bool, error) {
	s := Set{}
	if ts.word("local") {
		s.Local = true
	} else {
		ts.word("session")
	}
	if t := ts.peek(); t.kind == tWord && (t.s == "transaction" || t.s == "characteristics") {
		// SET TRANSACTION modes, SET SESSION CHARACTERISTICS AS
		// TRANSACTION modes: only the isolation level has an effect.
		m := TxMode{Session: t.s == "characteristics"}
		iso, err := isolationIn(ts.t[ts.i:], sql)
		if err != nil {
			return nil, true, err
		}
		m.Isolation = iso
		return m, true, nil
	}
	if t := ts.peek(); t.kind == tWord && t.s == "constraints" {
		return Ignored{Tag: "SET"}, true, nil
	}
	if ts.word("time") {
		if !ts.word("zone") {
			return nil, true, syntaxErr(sql)
		}
		s.Name = "timezone"
	} else if ts.word("names") {
		s.Name = "client_encoding"
	} else {
		n, ok := ts.name()
		if !ok {
			return nil, true, syntaxErr(sql)
		}
		s.Name = n
		if !ts.word("to") && !ts.punct("=") {
			return nil, true, syntaxErr(sql)
		}
	}
	var vals []string
	for !ts.done() {
		t := ts.next()
		if t.kind == tPunct {
			if t.s == "," {
				continue
			}
			if t.s == "-" && ts.peek().kind == tNumber {
				vals = append(vals, "-"+ts.next().s)
				continue
			}
			return nil, true, syntaxErr(sql)
		}
		if t.kind == tWord && t.s == "default" && len(vals) == 0 {
			s.Default = true
			continue
		}
		vals = append(vals, t.s)
	}
	if len(vals) == 0 && !s.Default {
		return nil, true, syntaxErr(sql)
	}
	s.Value = strings.Join(vals, ", ")
	return s, true, nil
}

func parseCopy(ts *tokens) (Copy, error) {
	c := Copy{Delimiter: '\t', Null: `\N`, Quote: '"'}
	name, ok := ts.name()
	if !ok {
		return c, errExpected("table name")
	}
	c.Table = name
	if ts.punct("(") {
		for {
			n, ok := ts.name()
			if !ok {
				return c, errExpected("column name")
			}
			c.Columns = append(c.Columns, n)
			if ts.punct(")") {
				break
			}
			if !ts.punct(",") {
				return c, errExpected("',' or ')'")
			}
		}
	}
	switch {
	case ts.word("from"):
		c.From = true
		if !ts.word("stdin") {
			return c, errExpected("STDIN (files are not supported)")
		}
	case ts.word("to"):
		if !ts.word("stdout") {
			return c, errExpected("STDOUT (files are not supported)")
		}
	default:
		return c, errExpected("FROM or TO")
	}
	ts.word("with")
	if ts.punct("(") {
		for !ts.punct(")") {
			if ts.done() {
				return c, errExpected("')'")
			}
			opt := ts.next().s
			var val string
			if t := ts.peek(); !(t.kind == tPunct && (t.s == "," || t.s == ")")) {
				val = ts.next().s
			}
			if err := c.option(opt, val); err != nil {
				return c, err
			}
			ts.punct(",")
		}
	} else {
		// Old syntax: [BINARY] [DELIMITER [AS] 'x'] [NULL [AS] 'x'] [CSV [HEADER] ...]
		for !ts.done() {
			w := ts.next().s
			switch w {
			case "binary", "csv", "header", "freeze":
				if err := c.option(w, ""); err != nil {
					return c, err
				}
				if w == "binary" || w == "csv" {
					c.option("format", w)
				}
			case "delimiter", "null", "quote", "escape":
				ts.word("as")
				if err := c.option(w, ts.next().s); err != nil {
					return c, err
				}
			default:
				return c, errExpected("COPY option, got " + w)
			}
		}
	}
	if c.CSV && c.Null == `\N` {
		c.Null = ""
	}
	if c.CSV && c.Delimiter == '\t' && !c.delimExplicit {
		c.Delimiter = ','
	}
	if c.Escape == 0 {
		c.Escape = c.Quote
	}
	return c, nil
}

func (c *Copy) option(opt, val string) error {
	switch opt {
	case "format":
		switch val {
		case "text":
		case "csv":
			c.CSV = true
		case "binary":
			c.Binary = true
		default:
			return errExpected("format text, csv or binary")
		}
	case "csv":
		c.CSV = true
		if c.Delimiter == '\t' {
			c.Delimiter = ','
		}
	case "binary":
		c.Binary = true
	case "delimiter":
		if len(val) != 1 {
			return errExpected("a one-byte delimiter")
		}
		c.Delimiter = val[0]
		c.delimExplicit = true
	case "null":
		c.Null = val
	case "header":
		c.Header = val == "" || val == "true" || val == "on" || val == "1"
	case "quote":
		if len(val) != 1 {
			return errExpected("a one-byte quote")
		}
		c.Quote = val[0]
	case "escape":
		if len(val) != 1 {
			return errExpected("a one-byte escape")
		}
		c.Escape = val[0]
	case "freeze", "encoding", "force_not_null", "force_null", "force_quote":
	default:
		return errExpected("a COPY option, got " + opt)
	}
	return nil
}

type expectedError string

func (e expectedError) Error() string { return "expected " + string(e) }

func errExpected(what string) error { return expectedError(what) }

// TxMode is SET TRANSACTION (Session false) or SET SESSION
// CHARACTERISTICS AS TRANSACTION (Session true) with its isolation level
// ("" when the statement names none).
type TxMode struct {
	Isolation string
	Session   bool
}

// Isolation returns the isolation level a BEGIN / START TRANSACTION (or SET
// TRANSACTION) statement names, lower-case ("read committed", ...), or ""
// if it names none. The SQL parser accepts the levels but does not keep
// them apart.
func Isolation(sql string) (string, error) {
	toks, err := tokenize(sql)
	if err != nil {
		return "", err
	}
	return isolationIn(toks, sql)
}

func isolationIn(toks []token, sql string) (string, error) {
	for i := 0; i+2 < len(toks); i++ {
		if toks[i].kind != tWord || toks[i].s != "isolation" || toks[i+1].s != "level" {
			continue
		}
		w := toks[i+2].s
		var next string
		if i+3 < len(toks) {
			next = toks[i+3].s
		}
		switch {
		case w == "serializable":
			return "serializable", nil
		case w == "repeatable" && next == "read":
			return "repeatable read", nil
		case w == "read" && next == "committed":
			return "read committed", nil
		case w == "read" && next == "uncommitted":
			return "read uncommitted", nil
		}
		return "", syntaxErr(sql)
	}
	return "", nil
}
