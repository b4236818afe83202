// Package exec plans and executes SQL statements on the storage engine.
//
// A Session holds one client's state: its engine transaction, settings and
// prepared statements. Statements arrive parsed (package parse), are
// planned into a tree of operators (scans with point, range and index
// access paths, hash and index nested-loop joins, hash aggregation, sort,
// limit) and run row at a time in push style: each operator calls emit for
// every row it produces. Rows are stored as engine key/value pairs: the key
// is the order-preserving encoding of the primary key (or a hidden row id),
// the value the row encoding of all columns (package datum); secondary
// indexes are engine tables keyed by index columns plus primary key.
//
// Transactions map one to one onto engine transactions (serializable,
// optimistic). Rows that UPDATE, DELETE, INSERT (by primary key) and
// SELECT ... FOR UPDATE touch are also locked until the transaction ends,
// so hot rows are updated in turn instead of failing validation; lock waits
// detect deadlocks (40P01). Outside an explicit transaction, a statement
// that fails validation is retried transparently: its results have not
// been sent yet.
package exec

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/auxten/postgresql-parser/pkg/sql/sem/tree"

	"github.com/cumulusdb/cumulus/db/catalog"
	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/parse"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
	"github.com/cumulusdb/cumulus/db/storage"
)

// Engine is the SQL layer of one database.
type Engine struct {
	DB     *storage.DB
	Cat    *catalog.Catalog
	Logger *slog.Logger
	locks  lockTable
	nextID atomic.Int32
	seqMu  sync.Mutex
}

// New opens the SQL layer on an open storage engine.
func New(db *storage.DB, logger *slog.Logger) (*Engine, error) {
	if logger == nil {
		logger = slog.Default()
	}
	cat, err := catalog.Open(db)
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	e := &Engine{DB: db, Cat: cat, Logger: logger}
	e.locks.m = map[string]*rowLock{}
	return e, nil
}

// Column describes a result column.
type Column struct {
	Name     string
	Type     datum.Type
	TableOID uint32
	Attnum   int16
}

// Result is the outcome of one statement.
type Result struct {
	Columns []Column // nil: the statement returns no rows
	Rows    []Row
	Tag     string
	Copy    *CopyIn // set for COPY FROM STDIN: the caller streams data into it
	CopyOut *CopyOut
	Notices []string
}

// Transaction states as ReadyForQuery reports them.
const (
	TxIdle   = 'I'
	TxActive = 'T'
	TxFailed = 'E'
)

// Session is one client's connection state. Not safe for concurrent use,
// except Cancel.
type Session struct {
	ID       int32
	eng      *Engine
	tx       *storage.Tx
	state    byte
	changes  *catalog.Changes
	held     []string
	waitKey  string // the row lock being waited for; guarded by eng.locks.mu
	settings map[string]string
	parser   parse.Parser
	canceled atomic.Bool
	// Secret for cancel requests.
	Secret  int32
	txStart int64
	// pendingWrites counts bulk writes since the engine transaction began.
	pendingWrites int
	// txIso is the running transaction's isolation level; txQueries
	// counts its statements (SET TRANSACTION must come first).
	txIso     string
	txQueries int
	// templates caches simple-protocol statement shapes (autoparam.go).
	templates map[string]*template
}

// NewSession starts a session.
func (e *Engine) NewSession() *Session {
	s := &Session{ID: e.nextID.Add(1), eng: e, state: TxIdle, settings: map[string]string{}}
	return s
}

// Close ends the session, rolling back an open transaction.
func (s *Session) Close() {
	s.endTx(false)
}

// TxStatus reports 'I' (idle), 'T' (in a transaction) or 'E' (failed).
func (s *Session) TxStatus() byte { return s.state }

// Cancel asks the running statement to stop (a cancel request).
func (s *Session) Cancel() { s.canceled.Store(true) }

// Engine returns the session's engine.
func (s *Session) Engine() *Engine { return s.eng }

func (s *Session) lookupTable(name string) *catalog.Table {
	return s.eng.Cat.Lookup(s.changes, name)
}

// ---- settings ----

var defaultSettings = map[string]string{
	"server_version":                "15.0",
	"server_version_num":            "150000",
	"server_encoding":               "UTF8",
	"client_encoding":               "UTF8",
	"datestyle":                     "ISO, MDY",
	"timezone":                      "UTC",
	"integer_datetimes":             "on",
	"standard_conforming_strings":   "on",
	"application_name":              "",
	"search_path":                   `"$user", public`,
	"synchronous_commit":            "on",
	"transaction_isolation":         "serializable",
	"default_transaction_isolation": "serializable",
	"intervalstyle":                 "postgres",
	"is_superuser":                  "on",
	"max_identifier_length":         "63",
	"extra_float_digits":            "1",
	"lock_timeout":                  "0",
	"statement_timeout":             "0",
}

// ParameterStatus lists the settings reported to clients at startup.
func ParameterStatus() [][2]string {
	var out [][2]string
	for _, k := range []string{"server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone",
		"integer_datetimes", "standard_conforming_strings", "application_name", "IntervalStyle", "is_superuser"} {
		out = append(out, [2]string{k, defaultSettings[strings.ToLower(k)]})
	}
	return out
}

func (s *Session) getVar(name string) string {
	name = strings.ToLower(name)
	if name == "transaction_isolation" && s.tx != nil && s.state != TxIdle {
		return s.txIso
	}
	if name == "transaction_isolation" {
		name = "default_transaction_isolation"
	}
	if v, ok := s.settings[name]; ok {
		return v
	}
	return defaultSettings[name]
}

func (s *Session) setVar(name, val string) {
	s.settings[strings.ToLower(name)] = val
}

// SetVar sets a session setting (startup parameters).
func (s *Session) SetVar(name, val string) { s.setVar(name, val) }

func (s *Session) syncCommit() bool {
	switch strings.ToLower(s.getVar("synchronous_commit")) {
	case "off", "false", "0", "no":
		return false
	}
	return true
}

// ---- transactions ----

func (s *Session) begin() error {
	tx, err := s.eng.DB.Begin(true)
	if err != nil {
		return sqlerr.Wrap(sqlerr.Internal, err, "begin")
	}
	s.tx = tx
	s.txQueries = 0
	s.setIsolation(s.getVar("default_transaction_isolation"))
	s.pendingWrites = 0
	s.changes = &catalog.Changes{}
	s.txStart = time.Now().UnixMicro()
	return nil
}

// Isolation levels. SERIALIZABLE is the engine's own (optimistic,
// validated at commit); REPEATABLE READ gets it too, as the standard
// allows a stronger level. READ COMMITTED (and READ UNCOMMITTED, as in
// PostgreSQL) leave reads unvalidated: a transaction never fails with
// 40001, rows it updates or deletes are locked before they are read (so
// no update is lost), and each statement reads the latest committed rows,
// but unlike PostgreSQL a statement has no snapshot of its own: it may
// see a concurrent commit partially.
// It is set before the transaction's first read (BEGIN, or SET
// TRANSACTION before any query), so either direction is exact.
func (s *Session) setIsolation(level string) {
	level = strings.ToLower(strings.TrimSpace(level))
	if !validIsolation(level) {
		level = "serializable"
	}
	s.tx.SetReadCommitted(level == "read committed" || level == "read uncommitted")
	s.txIso = level
}

// validIsolation checks a level given to SET default_transaction_isolation.
func validIsolation(level string) bool {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "read committed", "read uncommitted", "repeatable read", "serializable":
		return true
	}
	return false
}

// endTx commits or rolls back the engine transaction and releases locks.
func (s *Session) endTx(commit bool) error {
	var err error
	if s.tx != nil {
		if commit {
			if !s.syncCommit() {
				s.tx.SetAsync()
			}
			err = s.tx.Commit()
			if err == nil {
				s.eng.Cat.Publish(s.changes)
			}
		} else {
			s.tx.Rollback()
		}
	}
	s.tx, s.changes = nil, nil
	s.releaseLocks()
	s.state = TxIdle
	return translate(err)
}

// translate maps engine errors to SQL errors.
func translate(err error) error {
	if err == nil {
		return nil
	}
	var se *sqlerr.Error
	if errors.As(err, &se) {
		return err
	}
	switch {
	case errors.Is(err, storage.ErrConflict):
		return &sqlerr.Error{Code: sqlerr.SerializationFailure, Message: "could not serialize access due to concurrent update", Detail: err.Error(), Err: err}
	case errors.Is(err, storage.ErrTooLarge):
		return sqlerr.Wrap(sqlerr.ProgramLimitExceeded, err, "row too large")
	case errors.Is(err, storage.ErrTxTooLarge):
		return sqlerr.Wrap(sqlerr.ProgramLimitExceeded, err, "transaction too large")
	}
	return sqlerr.Wrap(sqlerr.Internal, err, "storage")
}

// ---- prepared statements ----

// Prepared is a parsed (and, once described, planned) statement.
type Prepared struct {
	Stmt       parse.Stmt
	ParamTypes []datum.Type
	fixedTypes int // parameter types given by the client
	plan       stmtPlan
	version    uint64
	planned    bool
	// template and args: a simple-protocol statement executed as its
	// session template (autoparam.go).
	template *Prepared
	args     []datum.Value
}

// stmtPlan is a planned DML or query statement.
type stmtPlan interface {
	columns() []col
	exec(rc *runCtx) (*Result, error)
}

// Parse parses a query string into statements (simple protocol).
func (s *Session) Parse(sql string) ([]*Prepared, error) {
	if t, args, ok := s.templated(sql); ok {
		return []*Prepared{{Stmt: t.Stmt, template: t, args: args}}, nil
	}
	stmts, err := s.parser.Parse(sql)
	if err != nil {
		return nil, err
	}
	out := make([]*Prepared, len(stmts))
	for i, st := range stmts {
		out[i] = &Prepared{Stmt: st}
	}
	return out, nil
}

// Prepare parses and plans one statement (extended protocol). paramOIDs
// are the client's parameter types (0: infer).
func (s *Session) Prepare(sql string, paramOIDs []uint32) (*Prepared, error) {
	st, err := s.parser.ParseOne(sql)
	if err != nil {
		return nil, err
	}
	p := &Prepared{Stmt: st, fixedTypes: len(paramOIDs)}
	for _, o := range paramOIDs {
		p.ParamTypes = append(p.ParamTypes, datum.Type{OID: o, Typmod: -1})
	}
	n := st.NumPlaceholders
	for len(p.ParamTypes) < n {
		p.ParamTypes = append(p.ParamTypes, datum.Type{})
	}
	if st.AST != nil && plannable(st.AST) {
		if err := s.withReadTx(func() error { return s.planPrepared(p) }); err != nil {
			return nil, err
		}
	}
	for i := range p.ParamTypes {
		if p.ParamTypes[i].OID == 0 {
			p.ParamTypes[i] = datum.TText
		}
	}
	return p, nil
}

// withReadTx runs fn with a transaction available (planning may look at
// table storage).
func (s *Session) withReadTx(fn func() error) error {
	if s.tx != nil {
		return fn()
	}
	if err := s.begin(); err != nil {
		return err
	}
	err := fn()
	s.tx.Rollback()
	s.tx, s.changes = nil, nil
	return err
}

func plannable(st tree.Statement) bool {
	switch st.(type) {
	case *tree.Select, *tree.Insert, *tree.Update, *tree.Delete:
		return true
	}
	return false
}

func (s *Session) planPrepared(p *Prepared) error {
	c := &compiler{s: s}
	for _, t := range p.ParamTypes {
		c.params = append(c.params, t)
	}
	pl, err := c.planStatement(p.Stmt.AST)
	if err != nil {
		if ep := emptyCatalogPlan(p.Stmt); ep != nil {
			p.plan, p.version, p.planned = ep, s.eng.Cat.Version(), true
			return nil
		}
		return err
	}
	for i, t := range c.params {
		if i < len(p.ParamTypes) && p.ParamTypes[i].OID == 0 {
			p.ParamTypes[i] = t
		} else if i >= len(p.ParamTypes) {
			p.ParamTypes = append(p.ParamTypes, t)
		}
	}
	p.plan, p.version, p.planned = pl, s.eng.Cat.Version(), true
	return nil
}

// Columns returns the result columns of a prepared statement (nil if it
// returns no rows).
func (p *Prepared) Columns() []Column {
	if p.plan == nil {
		if sh, ok := p.Stmt.Own.(parse.Show); ok {
			return []Column{{Name: sh.Name, Type: datum.TText}}
		}
		return nil
	}
	return toColumns(p.plan.columns())
}

func toColumns(cs []col) []Column {
	if cs == nil {
		return nil
	}
	out := make([]Column, len(cs))
	for i, c := range cs {
		out[i] = Column{Name: c.name, Type: c.typ, TableOID: c.tableOID, Attnum: c.attnum}
	}
	return out
}

// ---- execution ----

const maxRetries = 50

// Execute runs a prepared statement with parameter values.
func (s *Session) Execute(p *Prepared, params []datum.Value) (res *Result, err error) {
	if p.template != nil {
		return s.Execute(p.template, p.args)
	}
	defer func() {
		if r := recover(); r != nil {
			s.eng.Logger.Error("exec: panic", "sql", p.Stmt.SQL, "panic", r)
			err = sqlerr.New(sqlerr.Internal, "internal error: %v", r)
			wasActive := s.state != TxIdle
			s.endTx(false)
			if wasActive {
				s.state = TxFailed
			}
		}
	}()
	s.canceled.Store(false)
	st := p.Stmt
	// Transaction control.
	switch n := st.AST.(type) {
	case *tree.BeginTransaction:
		if s.state != TxIdle {
			return &Result{Tag: "BEGIN", Notices: []string{"there is already a transaction in progress"}}, nil
		}
		iso, err := parse.Isolation(st.SQL)
		if err != nil {
			return nil, err
		}
		if err := s.begin(); err != nil {
			return nil, err
		}
		if iso != "" {
			s.setIsolation(iso)
		}
		s.state = TxActive
		return &Result{Tag: "BEGIN"}, nil
	case *tree.CommitTransaction:
		switch s.state {
		case TxIdle:
			return &Result{Tag: "COMMIT", Notices: []string{"there is no transaction in progress"}}, nil
		case TxFailed:
			s.endTx(false)
			return &Result{Tag: "ROLLBACK"}, nil
		}
		if err := s.endTx(true); err != nil {
			return nil, err
		}
		return &Result{Tag: "COMMIT"}, nil
	case *tree.RollbackTransaction:
		if s.state == TxIdle {
			return &Result{Tag: "ROLLBACK", Notices: []string{"there is no transaction in progress"}}, nil
		}
		s.endTx(false)
		return &Result{Tag: "ROLLBACK"}, nil
	case *tree.Savepoint, *tree.ReleaseSavepoint, *tree.RollbackToSavepoint:
		_ = n
		return nil, sqlerr.New(sqlerr.FeatureNotSupported, "savepoints are not supported")
	}
	if s.state == TxFailed {
		return nil, sqlerr.New(sqlerr.InFailedTx, "current transaction is aborted, commands ignored until end of transaction block")
	}
	implicit := s.state == TxIdle
	for attempt := 0; ; attempt++ {
		if implicit {
			if err := s.begin(); err != nil {
				return nil, err
			}
		}
		res, err = s.execOne(p, params)
		if implicit {
			if err == nil && res != nil && res.Copy != nil {
				// COPY keeps the transaction open until the data is in.
				res.Copy.implicit = true
				return res, nil
			}
			if err == nil {
				err = s.endTx(true)
			} else {
				s.endTx(false)
			}
			if sqlerr.Code(translate(err)) == sqlerr.SerializationFailure && attempt < maxRetries {
				time.Sleep(time.Duration(attempt*attempt) * 50 * time.Microsecond)
				continue
			}
		} else if err != nil {
			// As in PostgreSQL, an error aborts the transaction at once
			// (releasing its locks); the block stays failed until it ends.
			s.endTx(false)
			s.state = TxFailed
		}
		if err != nil {
			return nil, translate(err)
		}
		return res, nil
	}
}

func (s *Session) execOne(p *Prepared, params []datum.Value) (*Result, error) {
	st := p.Stmt
	if st.AST != nil {
		s.txQueries++
	}
	if st.Own != nil {
		return s.execOwn(st.Own)
	}
	if plannable(st.AST) {
		if !p.planned || p.version != s.eng.Cat.Version() || !s.changes.Empty() {
			if err := s.planPrepared(p); err != nil {
				return nil, err
			}
		}
		rc := &runCtx{s: s, params: params, now: s.txStart}
		if len(params) < len(p.ParamTypes) && p.fixedTypes == 0 && len(params) > 0 {
			return nil, sqlerr.New(sqlerr.ProtocolViolation, "bind message supplies %d parameters, but prepared statement requires %d", len(params), len(p.ParamTypes))
		}
		return p.plan.exec(rc)
	}
	return s.execDDL(st.AST)
}

func (s *Session) execOwn(own any) (*Result, error) {
	switch n := own.(type) {
	case parse.Empty:
		return &Result{Tag: ""}, nil
	case parse.TxMode:
		if n.Isolation == "" {
			return &Result{Tag: "SET"}, nil
		}
		if n.Session {
			s.setVar("default_transaction_isolation", n.Isolation)
			return &Result{Tag: "SET"}, nil
		}
		if s.state == TxIdle {
			return &Result{Tag: "SET", Notices: []string{"SET TRANSACTION can only be used in transaction blocks"}}, nil
		}
		if s.txQueries > 0 {
			return nil, sqlerr.New(sqlerr.ActiveTx, "SET TRANSACTION ISOLATION LEVEL must be called before any query")
		}
		s.setIsolation(n.Isolation)
		return &Result{Tag: "SET"}, nil
	case parse.Set:
		v := n.Value
		if strings.EqualFold(n.Name, "default_transaction_isolation") && !n.Default && !validIsolation(v) {
			return nil, sqlerr.New(sqlerr.InvalidParameterValue, "invalid value for parameter \"default_transaction_isolation\": %q", v)
		}
		if n.Default {
			delete(s.settings, strings.ToLower(n.Name))
		} else {
			s.setVar(n.Name, v)
		}
		return &Result{Tag: "SET"}, nil
	case parse.Reset:
		if strings.EqualFold(n.Name, "all") {
			s.settings = map[string]string{}
		} else {
			delete(s.settings, strings.ToLower(n.Name))
		}
		return &Result{Tag: "RESET"}, nil
	case parse.Show:
		if n.Name == "all" {
			res := &Result{Columns: []Column{{Name: "name", Type: datum.TText}, {Name: "setting", Type: datum.TText}}, Tag: "SHOW"}
			var keys []string
			for k := range defaultSettings {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				res.Rows = append(res.Rows, Row{datum.Text(k), datum.Text(s.getVar(k))})
			}
			return res, nil
		}
		return &Result{Columns: []Column{{Name: n.Name, Type: datum.TText}}, Rows: []Row{{datum.Text(s.getVar(n.Name))}}, Tag: "SHOW"}, nil
	case parse.Vacuum:
		if n.Verb == "CHECKPOINT" {
			if err := s.eng.DB.Checkpoint(); err != nil {
				return nil, sqlerr.Wrap(sqlerr.Internal, err, "checkpoint")
			}
			return &Result{Tag: "CHECKPOINT"}, nil
		}
		for _, t := range n.Tables {
			if s.lookupTable(t) == nil {
				return nil, sqlerr.New(sqlerr.UndefinedTable, "relation %q does not exist", t)
			}
		}
		return &Result{Tag: n.Verb}, nil
	case parse.Ignored:
		return &Result{Tag: n.Tag}, nil
	case parse.Deallocate:
		return &Result{Tag: "DEALLOCATE"}, nil
	case parse.Copy:
		return s.startCopy(n)
	}
	return nil, sqlerr.New(sqlerr.FeatureNotSupported, "statement %T is not supported", own)
}

// planStatement plans a query or DML statement.
func (c *compiler) planStatement(st tree.Statement) (stmtPlan, error) {
	switch n := st.(type) {
	case *tree.Select:
		p, err := c.planSelectStmt(n, nil)
		if err != nil {
			return nil, err
		}
		return &queryPlan{p: p}, nil
	case *tree.Insert:
		return c.planInsert(n)
	case *tree.Update:
		return c.planUpdate(n)
	case *tree.Delete:
		return c.planDelete(n)
	}
	return nil, sqlerr.New(sqlerr.FeatureNotSupported, "statement %s is not supported", st.StatementTag())
}

type queryPlan struct{ p plan }

func (q *queryPlan) columns() []col {
	cs := q.p.cols()
	if cs == nil {
		cs = []col{}
	}
	return cs
}

func (q *queryPlan) exec(rc *runCtx) (*Result, error) {
	res := &Result{Columns: toColumns(q.columns())}
	n := 0
	err := q.p.run(rc, func(r Row) error {
		n++
		if n&1023 == 0 && rc.s.canceled.Load() {
			return sqlerr.New(sqlerr.QueryCanceled, "canceling statement due to user request")
		}
		res.Rows = append(res.Rows, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Tag = fmt.Sprintf("SELECT %d", len(res.Rows))
	return res, nil
}
