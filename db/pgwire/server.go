// Package pgwire serves CumulusDB over the PostgreSQL frontend/backend
// protocol (version 3.0) using github.com/jackc/pgx/v5/pgproto3 for message
// encoding: startup (SSL and GSS encryption requests are answered 'N'),
// trust or SCRAM-SHA-256 authentication, the simple and extended query
// protocols, COPY FROM STDIN / TO STDOUT, cancel requests, errors and
// notices with SQLSTATE codes, and the transaction status in ReadyForQuery.
// Each connection gets an exec.Session; a bad message or a panic ends that
// connection only.
package pgwire

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/exec"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// MaxMessageSize bounds a client message (larger ones end the connection).
const MaxMessageSize = 64 << 20

// Server serves one engine.
type Server struct {
	Engine *exec.Engine
	// Password, if set, requires SCRAM-SHA-256 authentication for every
	// connection; otherwise loopback connections are trusted and others
	// refused.
	Password string
	// Trust: client networks trusted like loopback when Password is empty.
	Trust  []netip.Prefix
	Logger *slog.Logger

	mu       sync.Mutex
	ln       net.Listener
	sessions map[int32]*exec.Session
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// Serve accepts connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	s.mu.Lock()
	s.ln = ln
	if s.sessions == nil {
		s.sessions = map[int32]*exec.Session{}
		s.conns = map[net.Conn]struct{}{}
	}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("pgwire: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops accepting, closes connections and waits for their sessions
// to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

type conn struct {
	srv     *Server
	nc      net.Conn
	be      *pgproto3.Backend
	sess    *exec.Session
	stmts   map[string]*exec.Prepared
	portals map[string]*portal
	log     *slog.Logger
	// ignoreTillSync is set after an error in the extended protocol.
	ignoreTillSync bool
}

type portal struct {
	stmt    *exec.Prepared
	params  []datum.Value
	formats []int16
	res     *exec.Result
	sent    int
	done    bool
}

func (s *Server) handle(nc net.Conn) {
	c := &conn{srv: s, nc: nc, log: s.Logger.With("remote", nc.RemoteAddr().String()),
		stmts: map[string]*exec.Prepared{}, portals: map[string]*portal{}}
	defer nc.Close()
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("pgwire: connection panic", "panic", r)
		}
		if c.sess != nil {
			s.mu.Lock()
			delete(s.sessions, c.sess.ID)
			s.mu.Unlock()
			c.sess.Close()
		}
	}()
	c.be = pgproto3.NewBackend(bufio.NewReaderSize(nc, 64<<10), nc)
	c.be.SetMaxBodyLen(MaxMessageSize)
	ok, err := c.startup()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			c.log.Debug("pgwire: startup failed", "err", err)
		}
		return
	}
	if !ok {
		return
	}
	if err := c.loop(); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.log.Debug("pgwire: connection ended", "err", err)
	}
}

// startup handles SSL/GSS requests, cancel requests, the startup message
// and authentication. ok is false when the connection should just close.
func (c *conn) startup() (bool, error) {
	for {
		msg, err := c.be.ReceiveStartupMessage()
		if err != nil {
			return false, fmt.Errorf("pgwire: startup: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.nc.Write([]byte{'N'}); err != nil {
				return false, fmt.Errorf("pgwire: startup: %w", err)
			}
			continue
		case *pgproto3.CancelRequest:
			if len(m.SecretKey) == 4 {
				c.srv.cancel(int32(m.ProcessID), int32(binary.BigEndian.Uint32(m.SecretKey)))
			}
			return false, nil
		case *pgproto3.StartupMessage:
			return c.startSession(m)
		default:
			return false, fmt.Errorf("pgwire: unexpected startup message %T", msg)
		}
	}
}

func (s *Server) cancel(pid, secret int32) {
	s.mu.Lock()
	sess := s.sessions[pid]
	s.mu.Unlock()
	if sess != nil && sess.Secret == secret {
		sess.Cancel()
	}
}

func (c *conn) fatal(code, msg string) error {
	c.be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	return c.be.Flush()
}

// trusted reports whether a is in one of the Trust networks.
func (s *Server) trusted(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(t.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range s.Trust {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func isLoopback(a net.Addr) bool {
	switch t := a.(type) {
	case *net.TCPAddr:
		return t.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *conn) startSession(m *pgproto3.StartupMessage) (bool, error) {
	if m.ProtocolVersion>>16 != 3 {
		return false, c.fatal(sqlerr.ProtocolViolation, fmt.Sprintf("unsupported frontend protocol %d.%d", m.ProtocolVersion>>16, m.ProtocolVersion&0xffff))
	}
	user := m.Parameters["user"]
	if user == "" {
		return false, c.fatal(sqlerr.InvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	}
	if c.srv.Password != "" {
		if err := c.scram(c.srv.Password); err != nil {
			c.fatal(sqlerr.InvalidPassword, fmt.Sprintf("password authentication failed for user %q", user))
			return false, err
		}
	} else if !isLoopback(c.nc.RemoteAddr()) && !c.srv.trusted(c.nc.RemoteAddr()) {
		return false, c.fatal(sqlerr.InvalidAuthorization, "no password configured: only loopback connections are trusted (start the server with --password)")
	}
	c.sess = c.srv.Engine.NewSession()
	var sec [4]byte
	rand.Read(sec[:])
	c.sess.Secret = int32(binary.BigEndian.Uint32(sec[:]))
	c.srv.mu.Lock()
	c.srv.sessions[c.sess.ID] = c.sess
	c.srv.mu.Unlock()
	for k, v := range m.Parameters {
		switch k {
		case "user", "database", "replication":
		case "options":
			for _, kv := range startupOptions(v) {
				c.sess.SetVar(kv[0], kv[1])
			}
		default:
			c.sess.SetVar(k, v)
		}
	}
	c.be.Send(&pgproto3.AuthenticationOk{})
	for _, kv := range exec.ParameterStatus() {
		v := kv[1]
		if k := strings.ToLower(kv[0]); k == "application_name" {
			v = m.Parameters["application_name"]
		}
		c.be.Send(&pgproto3.ParameterStatus{Name: kv[0], Value: v})
	}
	c.be.Send(&pgproto3.ParameterStatus{Name: "session_authorization", Value: user})
	c.be.Send(&pgproto3.BackendKeyData{ProcessID: uint32(c.sess.ID), SecretKey: binary.BigEndian.AppendUint32(nil, uint32(c.sess.Secret))})
	c.be.Send(&pgproto3.ReadyForQuery{TxStatus: c.sess.TxStatus()})
	return true, c.be.Flush()
}

func (c *conn) sendError(err error) {
	e := sqlerr.As(err)
	sev := e.Severity
	if sev == "" {
		sev = "ERROR"
	}
	if e.Code == sqlerr.Internal {
		c.log.Warn("pgwire: internal error", "err", err)
	}
	c.be.Send(&pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint})
}

func (c *conn) sendNotices(res *exec.Result) {
	for _, n := range res.Notices {
		c.be.Send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: n})
	}
}

func (c *conn) loop() error {
	for {
		msg, err := c.be.Receive()
		if err != nil {
			var ue *pgproto3.ExceededMaxBodyLenErr
			if errors.As(err, &ue) {
				c.fatal(sqlerr.ProtocolViolation, "message too large")
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return io.EOF
			}
			// Malformed message: report and end the connection (framing
			// may be lost).
			c.fatal(sqlerr.ProtocolViolation, "invalid message: "+err.Error())
			return err
		}
		if c.ignoreTillSync {
			if _, ok := msg.(*pgproto3.Sync); !ok {
				if _, ok := msg.(*pgproto3.Terminate); !ok {
					continue
				}
			}
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			c.simpleQuery(m.String)
			c.be.Send(&pgproto3.ReadyForQuery{TxStatus: c.sess.TxStatus()})
			if err := c.be.Flush(); err != nil {
				return err
			}
		case *pgproto3.Parse:
			err := c.parse(m)
			c.afterExtended(err)
		case *pgproto3.Bind:
			c.afterExtended(c.bind(m))
		case *pgproto3.Describe:
			c.afterExtended(c.describe(m))
		case *pgproto3.Execute:
			c.afterExtended(c.execute(m))
		case *pgproto3.Close:
			if m.ObjectType == 'S' {
				delete(c.stmts, m.Name)
			} else {
				delete(c.portals, m.Name)
			}
			c.be.Send(&pgproto3.CloseComplete{})
		case *pgproto3.Sync:
			c.ignoreTillSync = false
			c.portals[""] = nil
			delete(c.portals, "")
			c.be.Send(&pgproto3.ReadyForQuery{TxStatus: c.sess.TxStatus()})
			if err := c.be.Flush(); err != nil {
				return err
			}
		case *pgproto3.Flush:
			if err := c.be.Flush(); err != nil {
				return err
			}
		case *pgproto3.Terminate:
			return nil
		case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
			// Stray COPY messages (after a failed COPY) are ignored.
		case *pgproto3.FunctionCall:
			c.sendError(sqlerr.New(sqlerr.FeatureNotSupported, "function call protocol is not supported"))
			c.ignoreTillSync = true
		default:
			c.sendError(sqlerr.New(sqlerr.ProtocolViolation, "unexpected message %T", msg))
			c.be.Send(&pgproto3.ReadyForQuery{TxStatus: c.sess.TxStatus()})
			if err := c.be.Flush(); err != nil {
				return err
			}
		}
	}
}

func (c *conn) afterExtended(err error) {
	if err != nil {
		c.sendError(err)
		c.ignoreTillSync = true
	}
}

func (c *conn) simpleQuery(sql string) {
	stmts, err := c.sess.Parse(sql)
	if err != nil {
		c.sendError(err)
		return
	}
	for _, p := range stmts {
		res, err := c.sess.Execute(p, nil)
		if err != nil {
			c.sendError(err)
			return
		}
		if res.Copy != nil {
			if res, err = c.copyIn(res.Copy); err != nil {
				c.sendError(err)
				return
			}
		}
		if err := c.sendResult(res, nil, 0, 0); err != nil {
			c.sendError(err)
			return
		}
		if res.Tag == "" && res.Columns == nil && res.CopyOut == nil {
			c.be.Send(&pgproto3.EmptyQueryResponse{})
			continue
		}
		c.be.Send(&pgproto3.CommandComplete{CommandTag: []byte(res.Tag)})
	}
}

func (c *conn) copyIn(ci *exec.CopyIn) (*exec.Result, error) {
	formats := make([]uint16, ci.NumColumns())
	c.be.Send(&pgproto3.CopyInResponse{OverallFormat: 0, ColumnFormatCodes: formats})
	if err := c.be.Flush(); err != nil {
		ci.Abort()
		return nil, err
	}
	for {
		msg, err := c.be.Receive()
		if err != nil {
			ci.Abort()
			return nil, sqlerr.Wrap(sqlerr.ProtocolViolation, err, "COPY")
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			ci.Write(m.Data) // errors are reported by Finish
		case *pgproto3.CopyDone:
			return ci.Finish()
		case *pgproto3.CopyFail:
			ci.Abort()
			return nil, sqlerr.New(sqlerr.QueryCanceled, "COPY from stdin failed: %s", m.Message)
		case *pgproto3.Flush, *pgproto3.Sync:
		default:
			ci.Abort()
			return nil, sqlerr.New(sqlerr.ProtocolViolation, "unexpected message %T during COPY", msg)
		}
	}
}

func fieldDescs(cols []exec.Column, formats []int16) []pgproto3.FieldDescription {
	fds := make([]pgproto3.FieldDescription, len(cols))
	for i, col := range cols {
		fds[i] = pgproto3.FieldDescription{Name: []byte(col.Name), TableOID: col.TableOID, TableAttributeNumber: uint16(col.Attnum),
			DataTypeOID: col.Type.OID, DataTypeSize: col.Type.Len(), TypeModifier: col.Type.Typmod, Format: formatFor(formats, i, col.Type.OID)}
	}
	return fds
}

func formatFor(formats []int16, i int, oid uint32) int16 {
	var f int16
	switch {
	case len(formats) == 1:
		f = formats[0]
	case i < len(formats):
		f = formats[i]
	}
	if f == 1 && !datum.HasBinary(oid) {
		return 0
	}
	return f
}

// sendResult sends a result's rows (from row start; at most max, 0: all).
// It returns the number of rows sent.
func (c *conn) sendResult(res *exec.Result, formats []int16, start, max int) error {
	c.sendNotices(res)
	if res.CopyOut != nil {
		co := res.CopyOut
		c.be.Send(&pgproto3.CopyOutResponse{OverallFormat: 0, ColumnFormatCodes: make([]uint16, co.NumColumns)})
		for _, l := range co.Lines {
			c.be.Send(&pgproto3.CopyData{Data: l})
		}
		c.be.Send(&pgproto3.CopyDone{})
		return nil
	}
	if res.Columns == nil {
		return nil
	}
	if start == 0 && formats == nil {
		c.be.Send(&pgproto3.RowDescription{Fields: fieldDescs(res.Columns, nil)})
	}
	return c.sendRows(res, formats, start, max)
}

func (c *conn) sendRows(res *exec.Result, formats []int16, start, max int) error {
	end := len(res.Rows)
	if max > 0 && start+max < end {
		end = start + max
	}
	var buf []byte
	for r := start; r < end; r++ {
		row := res.Rows[r]
		vals := make([][]byte, len(row))
		buf = buf[:0]
		offs := make([]int, len(row)+1)
		for i, v := range row {
			offs[i] = len(buf)
			if v.IsNull() {
				continue
			}
			t := res.Columns[i].Type
			if formatFor(formats, i, t.OID) == 1 {
				b, err := datum.AppendBinary(buf, v, t)
				if err != nil {
					return err
				}
				buf = b
			} else {
				buf = datum.AppendText(buf, v, t)
			}
		}
		offs[len(row)] = len(buf)
		data := append([]byte(nil), buf...)
		for i, v := range row {
			if v.IsNull() {
				continue
			}
			vals[i] = data[offs[i]:offs[i+1]]
		}
		c.be.Send(&pgproto3.DataRow{Values: vals})
		if (r-start)%512 == 511 {
			if err := c.be.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- extended protocol ----

func (c *conn) parse(m *pgproto3.Parse) error {
	p, err := c.sess.Prepare(m.Query, m.ParameterOIDs)
	if err != nil {
		return err
	}
	c.stmts[m.Name] = p
	c.be.Send(&pgproto3.ParseComplete{})
	return nil
}

func (c *conn) bind(m *pgproto3.Bind) error {
	p := c.stmts[m.PreparedStatement]
	if p == nil {
		return sqlerr.New(sqlerr.UndefinedObject, "prepared statement %q does not exist", m.PreparedStatement)
	}
	if len(m.Parameters) != len(p.ParamTypes) {
		return sqlerr.New(sqlerr.ProtocolViolation, "bind message supplies %d parameters, but prepared statement %q requires %d",
			len(m.Parameters), m.PreparedStatement, len(p.ParamTypes))
	}
	if len(m.ParameterFormatCodes) > 1 && len(m.ParameterFormatCodes) != len(m.Parameters) {
		return sqlerr.New(sqlerr.ProtocolViolation, "bind message has %d parameter formats but %d parameters", len(m.ParameterFormatCodes), len(m.Parameters))
	}
	params := make([]datum.Value, len(m.Parameters))
	for i, raw := range m.Parameters {
		if raw == nil {
			continue
		}
		var f int16
		if len(m.ParameterFormatCodes) == 1 {
			f = m.ParameterFormatCodes[0]
		} else if i < len(m.ParameterFormatCodes) {
			f = m.ParameterFormatCodes[i]
		}
		t := p.ParamTypes[i]
		var v datum.Value
		var err error
		if f == 1 {
			v, err = datum.FromBinary(raw, t)
		} else {
			v, err = datum.FromText(string(raw), datum.Type{OID: t.OID, Typmod: -1})
		}
		if err != nil {
			return err
		}
		params[i] = v
	}
	c.portals[m.DestinationPortal] = &portal{stmt: p, params: params, formats: m.ResultFormatCodes}
	c.be.Send(&pgproto3.BindComplete{})
	return nil
}

func (c *conn) describe(m *pgproto3.Describe) error {
	if m.ObjectType == 'S' {
		p := c.stmts[m.Name]
		if p == nil {
			return sqlerr.New(sqlerr.UndefinedObject, "prepared statement %q does not exist", m.Name)
		}
		oids := make([]uint32, len(p.ParamTypes))
		for i, t := range p.ParamTypes {
			oids[i] = t.OID
		}
		c.be.Send(&pgproto3.ParameterDescription{ParameterOIDs: oids})
		if cols := p.Columns(); cols != nil {
			c.be.Send(&pgproto3.RowDescription{Fields: fieldDescs(cols, nil)})
		} else {
			c.be.Send(&pgproto3.NoData{})
		}
		return nil
	}
	pt := c.portals[m.Name]
	if pt == nil {
		return sqlerr.New(sqlerr.UndefinedObject, "portal %q does not exist", m.Name)
	}
	cols := pt.stmt.Columns()
	if pt.res != nil {
		cols = pt.res.Columns
	}
	if cols != nil {
		c.be.Send(&pgproto3.RowDescription{Fields: fieldDescs(cols, pt.formats)})
	} else {
		c.be.Send(&pgproto3.NoData{})
	}
	return nil
}

func (c *conn) execute(m *pgproto3.Execute) error {
	pt := c.portals[m.Portal]
	if pt == nil {
		return sqlerr.New(sqlerr.UndefinedObject, "portal %q does not exist", m.Portal)
	}
	if pt.res == nil {
		res, err := c.sess.Execute(pt.stmt, pt.params)
		if err != nil {
			return err
		}
		if res.Copy != nil {
			if res, err = c.copyIn(res.Copy); err != nil {
				return err
			}
		}
		pt.res = res
		c.sendNotices(res)
		if res.CopyOut != nil {
			if err := c.sendResult(res, pt.formats, 0, 0); err != nil {
				return err
			}
			pt.done = true
		}
	}
	res := pt.res
	if !pt.done && res.Columns != nil {
		if err := c.sendRows(res, pt.formats, pt.sent, int(m.MaxRows)); err != nil {
			return err
		}
		n := len(res.Rows) - pt.sent
		if m.MaxRows > 0 && int(m.MaxRows) < n {
			pt.sent += int(m.MaxRows)
			c.be.Send(&pgproto3.PortalSuspended{})
			return nil
		}
		pt.sent = len(res.Rows)
	}
	pt.done = true
	if res.Tag == "" && res.Columns == nil {
		c.be.Send(&pgproto3.EmptyQueryResponse{})
		return nil
	}
	c.be.Send(&pgproto3.CommandComplete{CommandTag: []byte(res.Tag)})
	return nil
}

// startupOptions reads the "options" startup parameter (libpq's options,
// PGOPTIONS): "-c name=value" or "--name=value" settings separated by
// spaces, a backslash escaping the next character.
func startupOptions(s string) [][2]string {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	var out [][2]string
	for i := 0; i < len(words); i++ {
		var set string
		switch {
		case words[i] == "-c" && i+1 < len(words):
			i++
			set = words[i]
		case strings.HasPrefix(words[i], "-c"):
			set = words[i][2:]
		case strings.HasPrefix(words[i], "--"):
			set = words[i][2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(set, "="); ok && k != "" {
			out = append(out, [2]string{strings.ReplaceAll(k, "-", "_"), v})
		}
	}
	return out
}
