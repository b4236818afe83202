package exec

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/parse"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// CopyIn receives the data of a COPY ... FROM STDIN.
type CopyIn struct {
	s        *Session
	opts     parse.Copy
	t        *catalog.Table
	targets  []int
	w        *tableWriter
	rc       *runCtx
	pending  []byte
	rows     int
	line     int
	header   bool
	err      error
	implicit bool
	defaults []*expr
}

// NumColumns is the number of columns each row carries.
func (c *CopyIn) NumColumns() int { return len(c.targets) }

// CopyOut is the output of COPY ... TO STDOUT: one encoded line per row.
type CopyOut struct {
	NumColumns int
	Lines      [][]byte
}

func (s *Session) startCopy(opts parse.Copy) (*Result, error) {
	t := s.lookupTable(opts.Table)
	if t == nil {
		return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", opts.Table)
	}
	if opts.Binary {
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "COPY in binary format is not supported")
	}
	var targets []int
	if len(opts.Columns) == 0 {
		for i := range t.Columns {
			targets = append(targets, i)
		}
	} else {
		for _, cn := range opts.Columns {
			ci := t.ColumnIndex(cn)
			if ci < 0 {
				return nil, sqlerr.New(sqlerr.UndefinedColumn, "column %q of relation %q does not exist", cn, t.Name)
			}
			targets = append(targets, ci)
		}
	}
	if !opts.From {
		return s.copyOut(t, targets, opts)
	}
	c := &compiler{s: s}
	defs, err := c.defaultExprs(t)
	if err != nil {
		return nil, err
	}
	ci := &CopyIn{s: s, opts: opts, t: t, targets: targets, w: &tableWriter{t: t},
		rc: &runCtx{s: s, now: s.txStart}, header: opts.Header, defaults: defs}
	return &Result{Copy: ci}, nil
}

// Write takes the next chunk of COPY data. After an error, later chunks
// are ignored and Finish reports it.
func (c *CopyIn) Write(data []byte) error {
	if c.err != nil {
		return c.err
	}
	c.pending = append(c.pending, data...)
	for {
		end := c.recordEnd()
		if end < 0 {
			break
		}
		rec := c.pending[:end]
		c.pending = c.pending[end+1:]
		if err := c.record(rec); err != nil {
			c.err = err
			c.pending = nil
			return err
		}
	}
	return nil
}

// recordEnd finds the newline ending the next record (CSV quotes may hide
// newlines), or -1.
func (c *CopyIn) recordEnd() int {
	if !c.opts.CSV {
		return bytes.IndexByte(c.pending, '\n')
	}
	inQuote := false
	for i, b := range c.pending {
		switch {
		case b == c.opts.Quote:
			inQuote = !inQuote
		case b == '\n' && !inQuote:
			return i
		}
	}
	return -1
}

var errCopyDone = fmt.Errorf("copy: end marker")

func (c *CopyIn) record(rec []byte) error {
	c.line++
	rec = bytes.TrimSuffix(rec, []byte{'\r'})
	if c.header {
		c.header = false
		return nil
	}
	if string(rec) == `\.` {
		c.pending = nil
		return nil
	}
	var fields []datum.Value
	var err error
	if c.opts.CSV {
		fields, err = c.csvFields(rec)
	} else {
		fields, err = c.textFields(rec)
	}
	if err != nil {
		return err
	}
	if len(fields) != len(c.targets) {
		return sqlerr.New(sqlerr.BadCopyFormat, "COPY %s, line %d: expected %d columns, got %d", c.t.Name, c.line, len(c.targets), len(fields))
	}
	row := make(Row, len(c.t.Columns))
	set := make([]bool, len(row))
	for i, ci := range c.targets {
		v := fields[i]
		if v.K == datum.KText {
			if v, err = datum.FromText(v.S, c.t.Columns[ci].Type); err != nil {
				e := sqlerr.As(err)
				return &sqlerr.Error{Code: e.Code, Message: e.Message, Detail: fmt.Sprintf("COPY %s, line %d, column %s", c.t.Name, c.line, c.t.Columns[ci].Name)}
			}
		}
		row[ci], set[ci] = v, true
	}
	for i, d := range c.defaults {
		if !set[i] && d != nil {
			v, err := d.fn(c.rc, nil)
			if err != nil {
				return err
			}
			row[i] = v
		}
	}
	if err := c.w.insert(c.rc, row, true); err != nil {
		return err
	}
	c.rows++
	return c.s.noteWrites(1 + len(c.t.Indexes))
}

func (c *CopyIn) textFields(rec []byte) ([]datum.Value, error) {
	var out []datum.Value
	delim := c.opts.Delimiter
	start := 0
	for i := 0; i <= len(rec); i++ {
		if i < len(rec) && rec[i] == '\\' {
			i++
			continue
		}
		if i == len(rec) || rec[i] == delim {
			f := rec[start:i]
			if string(f) == c.opts.Null {
				out = append(out, datum.Null)
			} else {
				s, err := unescapeCopy(f)
				if err != nil {
					return nil, sqlerr.New(sqlerr.BadCopyFormat, "COPY %s, line %d: %v", c.t.Name, c.line, err)
				}
				out = append(out, datum.Text(s))
			}
			start = i + 1
		}
	}
	return out, nil
}

func unescapeCopy(f []byte) (string, error) {
	if bytes.IndexByte(f, '\\') < 0 {
		return string(f), nil
	}
	b := make([]byte, 0, len(f))
	for i := 0; i < len(f); i++ {
		if f[i] != '\\' || i+1 == len(f) {
			b = append(b, f[i])
			continue
		}
		i++
		switch f[i] {
		case 'n':
			b = append(b, '\n')
		case 't':
			b = append(b, '\t')
		case 'r':
			b = append(b, '\r')
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'v':
			b = append(b, '\v')
		case 'x':
			j := i + 1
			for j < len(f) && j < i+3 && isHex(f[j]) {
				j++
			}
			if j == i+1 {
				b = append(b, 'x')
				continue
			}
			v, _ := strconv.ParseUint(string(f[i+1:j]), 16, 8)
			b = append(b, byte(v))
			i = j - 1
		case '0', '1', '2', '3', '4', '5', '6', '7':
			j := i
			for j < len(f) && j < i+3 && f[j] >= '0' && f[j] <= '7' {
				j++
			}
			v, _ := strconv.ParseUint(string(f[i:j]), 8, 8)
			b = append(b, byte(v))
			i = j - 1
		default:
			b = append(b, f[i])
		}
	}
	return string(b), nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func (c *CopyIn) csvFields(rec []byte) ([]datum.Value, error) {
	var out []datum.Value
	q, esc, delim := c.opts.Quote, c.opts.Escape, c.opts.Delimiter
	i := 0
	for {
		var field []byte
		quoted := false
		for i < len(rec) && rec[i] != delim {
			if rec[i] == q {
				quoted = true
				i++
				for i < len(rec) {
					if rec[i] == esc && i+1 < len(rec) && rec[i+1] == q {
						field = append(field, q)
						i += 2
						continue
					}
					if rec[i] == q {
						i++
						break
					}
					field = append(field, rec[i])
					i++
				}
				continue
			}
			field = append(field, rec[i])
			i++
		}
		if !quoted && string(field) == c.opts.Null {
			out = append(out, datum.Null)
		} else {
			out = append(out, datum.Text(string(field)))
		}
		if i >= len(rec) {
			return out, nil
		}
		i++ // delimiter
	}
}

// Finish completes the COPY and returns its result.
func (c *CopyIn) Finish() (*Result, error) {
	if c.err == nil && len(c.pending) > 0 {
		rec := c.pending
		c.pending = nil
		c.err = c.record(rec)
	}
	if c.err != nil {
		c.Abort()
		return nil, c.err
	}
	res := &Result{Tag: fmt.Sprintf("COPY %d", c.rows)}
	if c.implicit {
		if err := c.s.endTx(true); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// Abort ends a failed or client-cancelled COPY.
func (c *CopyIn) Abort() {
	c.s.endTx(false)
	if !c.implicit {
		c.s.state = TxFailed
	}
}

func (s *Session) copyOut(t *catalog.Table, targets []int, opts parse.Copy) (*Result, error) {
	out := &CopyOut{NumColumns: len(targets)}
	sn := &scanNode{t: t, acc: accFull}
	rc := &runCtx{s: s}
	err := sn.each(rc, func(_ []byte, row Row) error {
		var b []byte
		for i, ci := range targets {
			if i > 0 {
				b = append(b, opts.Delimiter)
			}
			v := row[ci]
			if v.IsNull() {
				b = append(b, opts.Null...)
				continue
			}
			s := string(datum.AppendText(nil, v, t.Columns[ci].Type))
			if opts.CSV {
				if bytes.ContainsAny([]byte(s), string([]byte{opts.Delimiter, opts.Quote, '\n', '\r'})) || s == "" {
					s = string(opts.Quote) + string(bytes.ReplaceAll([]byte(s), []byte{opts.Quote}, []byte{opts.Escape, opts.Quote})) + string(opts.Quote)
				}
				b = append(b, s...)
				continue
			}
			for j := 0; j < len(s); j++ {
				switch ch := s[j]; ch {
				case '\\':
					b = append(b, '\\', '\\')
				case '\n':
					b = append(b, '\\', 'n')
				case '\r':
					b = append(b, '\\', 'r')
				case '\t':
					b = append(b, '\\', 't')
				default:
					if ch == opts.Delimiter {
						b = append(b, '\\')
					}
					b = append(b, ch)
				}
			}
		}
		out.Lines = append(out.Lines, append(b, '\n'))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Result{CopyOut: out, Tag: fmt.Sprintf("COPY %d", len(out.Lines))}, nil
}
