// Package parse turns SQL text into statements: it splits a query string
// into statements, parses the utility statements the PostgreSQL-dialect
// parser (github.com/auxten/postgresql-parser) lacks (COPY, VACUUM,
// ANALYZE, SET, SHOW, RESET, DISCARD, ...) itself, rewrites a few spellings
// psql uses that the parser does not know, and hands the rest to that
// parser.
package parse

import (
	"regexp"
	"strings"

	"github.com/auxten/postgresql-parser/pkg/sql/parser"
	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"
	"github.com/auxten/postgresql-parser/pkg/sql/types"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// Stmt is one parsed statement: either AST (from the SQL parser) or Own (one
// of this package's statement types) is set.
type Stmt struct {
	SQL             string
	AST             tree.Statement
	Own             any
	NumPlaceholders int
}

// Copy is COPY table [(cols)] FROM STDIN | TO STDOUT [WITH (options)].
type Copy struct {
	Table     string
	Columns   []string
	From      bool // FROM STDIN; otherwise TO STDOUT
	CSV       bool
	Binary    bool
	Delimiter byte
	Null      string
	Header    bool
	Quote     byte
	Escape    byte

	delimExplicit bool
}

// Vacuum is VACUUM or ANALYZE (accepted, nothing to do), or CHECKPOINT.
type Vacuum struct {
	Verb   string // "VACUUM", "ANALYZE", "CHECKPOINT"
	Tables []string
}

// Set is SET [SESSION|LOCAL] name {TO|=} value.
type Set struct {
	Name    string
	Value   string // "" with Default
	Local   bool
	Default bool
}

// Show is SHOW name (name "all": every setting).
type Show struct{ Name string }

// Reset is RESET name (or ALL).
type Reset struct{ Name string }

// Ignored is a statement accepted without effect (DISCARD, LISTEN, ...);
// Tag is its command tag.
type Ignored struct{ Tag string }

// Deallocate is DEALLOCATE [PREPARE] name | ALL.
type Deallocate struct{ Name string }

// Empty is an empty query string.
type Empty struct{}

// Parser parses SQL; it keeps state between calls and is not safe for
// concurrent use.
type Parser struct {
	p parser.Parser
}

// Parse parses a query string of one or more statements.
func (ps *Parser) Parse(sql string) ([]Stmt, error) {
	parts := Split(sql)
	out := make([]Stmt, 0, len(parts))
	for _, part := range parts {
		st, err := ps.ParseOne(part)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// ParseOne parses a single statement (no top-level semicolons).
func (ps *Parser) ParseOne(sql string) (st Stmt, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = sqlerr.New(sqlerr.SyntaxError, "syntax error: parser failed on %q", trunc(sql))
		}
	}()
	st.SQL = sql
	if strings.TrimSpace(stripComments(sql)) == "" {
		st.Own = Empty{}
		return st, nil
	}
	own, ok, err := parseOwn(sql)
	if err != nil {
		return st, err
	}
	if ok {
		st.Own = own
		return st, nil
	}
	stmts, err := ps.p.ParseWithInt(rewrite(sql), types.Int4)
	if err != nil {
		return st, sqlerr.New(sqlerr.SyntaxError, "%s", err.Error())
	}
	switch len(stmts) {
	case 0:
		st.Own = Empty{}
	case 1:
		st.AST = stmts[0].AST
		st.NumPlaceholders = stmts[0].NumPlaceholders
	default:
		return st, sqlerr.New(sqlerr.SyntaxError, "cannot insert multiple commands into a prepared statement")
	}
	return st, nil
}

func trunc(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// rewrite replaces spellings psql uses that the parser does not accept.
func rewrite(sql string) string {
	if !strings.Contains(sql, "pg_catalog.") {
		return sql
	}
	sql = operatorRE.ReplaceAllString(sql, " $1 ")
	return catalogRewriter.Replace(sql)
}

var operatorRE = regexp.MustCompile(`OPERATOR\(pg_catalog\.([^)]+)\)`)

var catalogRewriter = strings.NewReplacer(
	"COLLATE pg_catalog.default", "",
	"::pg_catalog.", "::",
)

// Split splits a query string at top-level semicolons, respecting quotes,
// dollar quotes and comments. Empty statements are dropped unless the whole
// string is empty.
func Split(sql string) []string {
	var out []string
	start := 0
	i := 0
	n := len(sql)
	for i < n {
		c := sql[i]
		switch {
		case c == '\'' || c == '"':
			i = skipQuoted(sql, i, c)
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			depth := 0
			for i < n {
				if i+1 < n && sql[i] == '/' && sql[i+1] == '*' {
					depth++
					i += 2
					continue
				}
				if i+1 < n && sql[i] == '*' && sql[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
					continue
				}
				i++
			}
		case c == '$':
			j := i + 1
			for j < n && (isIdent(sql[j])) {
				j++
			}
			if j < n && sql[j] == '$' && (j == i+1 || !isDigit(sql[i+1])) {
				tag := sql[i : j+1]
				end := strings.Index(sql[j+1:], tag)
				if end < 0 {
					i = n
				} else {
					i = j + 1 + end + len(tag)
				}
			} else {
				i++
			}
		case c == ';':
			if s := sql[start:i]; strings.TrimSpace(stripComments(s)) != "" {
				out = append(out, s)
			}
			i++
			start = i
		default:
			i++
		}
	}
	if s := sql[start:]; strings.TrimSpace(stripComments(s)) != "" {
		out = append(out, s)
	}
	if len(out) == 0 {
		out = append(out, "")
	}
	return out
}

func skipQuoted(s string, i int, q byte) int {
	i++
	for i < len(s) {
		if s[i] == q {
			if i+1 < len(s) && s[i+1] == q {
				i += 2
				continue
			}
			return i + 1
		}
		i++
	}
	return i
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func stripComments(s string) string {
	if !strings.Contains(s, "--") && !strings.Contains(s, "/*") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case s[i] == '\'' || s[i] == '"':
			j := skipQuoted(s, i, s[i])
			b.WriteString(s[i:j])
			i = j
		case strings.HasPrefix(s[i:], "--"):
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case strings.HasPrefix(s[i:], "/*"):
			j := strings.Index(s[i+2:], "*/")
			if j < 0 {
				i = len(s)
			} else {
				i += j + 4
			}
			b.WriteByte(' ')
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String()
}
