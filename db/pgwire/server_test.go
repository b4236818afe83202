package pgwire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	sqlexec "github.com/cumulusdb/cumulus/db/sql/exec"
	"github.com/cumulusdb/cumulus/db/storage"
)

type testServer struct {
	addr string
	srv  *Server
	db   *storage.DB
}

func startServer(t testing.TB, password string) *testServer {
	t.Helper()
	dir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := storage.Open(filepath.Join(dir, "db"), &storage.Options{PoolSize: 128 << 20, WALSize: 32 << 20, Buffered: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := sqlexec.New(db, logger)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{addr: ln.Addr().String(), srv: &Server{Engine: eng, Password: password, Logger: logger}, db: db}
	go ts.srv.Serve(ln)
	t.Cleanup(func() {
		ts.srv.Close()
		db.Close()
	})
	return ts
}

func (ts *testServer) url(extra string) string {
	return fmt.Sprintf("postgres://cumulus%s@%s/anydb?sslmode=disable", extra, ts.addr)
}

func connect(t *testing.T, ts *testServer, simple bool) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(ts.url(""))
	if err != nil {
		t.Fatal(err)
	}
	if simple {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	}
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func TestPgxProtocols(t *testing.T) {
	ts := startServer(t, "")
	ctx := context.Background()
	for _, simple := range []bool{true, false} {
		name := map[bool]string{true: "simple", false: "extended"}[simple]
		t.Run(name, func(t *testing.T) {
			c := connect(t, ts, simple)
			table := "items_" + name
			if _, err := c.Exec(ctx, "create table "+table+" (id int primary key, name text, price numeric(10,2), qty bigint, ok boolean, at timestamp, f double precision)"); err != nil {
				t.Fatal(err)
			}
			at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
			for i := 1; i <= 3; i++ {
				var nm any = fmt.Sprintf("item%d", i)
				if i == 3 {
					nm = nil
				}
				if _, err := c.Exec(ctx, "insert into "+table+" values ($1, $2, $3, $4, $5, $6, $7)", i, nm, "12.34", int64(i)<<40, i%2 == 0, at, 1.5*float64(i)); err != nil {
					t.Fatal(err)
				}
			}
			rows, err := c.Query(ctx, "select id, name, price::text, qty, ok, at, f from "+table+" where id >= $1 order by id", 2)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var id int32
				var nm *string
				var price string
				var qty int64
				var ok bool
				var ts time.Time
				var f float64
				if err := rows.Scan(&id, &nm, &price, &qty, &ok, &ts, &f); err != nil {
					t.Fatal(err)
				}
				n := "NULL"
				if nm != nil {
					n = *nm
				}
				got = append(got, fmt.Sprintf("%d %s %s %d %v %s %g", id, n, price, qty, ok, ts.UTC().Format(time.RFC3339), f))
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("2 item2 12.34 %d true 2024-05-06T07:08:09Z 3;3 NULL 12.34 %d false 2024-05-06T07:08:09Z 4.5", int64(2)<<40, int64(3)<<40)
			if strings.Join(got, ";") != want {
				t.Fatalf("rows:\n got %s\nwant %s", strings.Join(got, ";"), want)
			}
			// Aggregates and numeric decoding.
			var sum float64
			var cnt int64
			if err := c.QueryRow(ctx, "select sum(price)::float8, count(*) from "+table).Scan(&sum, &cnt); err != nil || sum != 37.02 || cnt != 3 {
				t.Fatalf("sum/count: %v %v %v", sum, cnt, err)
			}
			// Errors carry SQLSTATEs and do not break the connection.
			_, err = c.Exec(ctx, "insert into "+table+" (id) values (1)")
			if pgCode(err) != "23505" {
				t.Fatalf("duplicate: %v", err)
			}
			_, err = c.Exec(ctx, "select * from nosuch")
			if pgCode(err) != "42P01" {
				t.Fatalf("missing table: %v", err)
			}
			// Transactions.
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "update "+table+" set qty = 0 where id = 1"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			var qty int64
			if err := c.QueryRow(ctx, "select qty from "+table+" where id = 1").Scan(&qty); err != nil || qty != 1<<40 {
				t.Fatalf("after rollback: %v %v", qty, err)
			}
		})
	}
}

func TestCopyFromStdin(t *testing.T) {
	ts := startServer(t, "")
	c := connect(t, ts, false)
	ctx := context.Background()
	if _, err := c.Exec(ctx, "create table acc (aid int primary key, bid int, note text)"); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&b, "%d\t%d\tn\\t%d\n", i, i%10, i)
	}
	tag, err := c.PgConn().CopyFrom(ctx, strings.NewReader(b.String()), "copy acc from stdin")
	if err != nil || tag.RowsAffected() != 1000 {
		t.Fatalf("copy: %v %v", tag, err)
	}
	var note string
	if err := c.QueryRow(ctx, "select note from acc where aid = 77").Scan(&note); err != nil || note != "n\t77" {
		t.Fatalf("note %q %v", note, err)
	}
	_, err = c.PgConn().CopyFrom(ctx, strings.NewReader("1\t2\tdup\n"), "copy acc from stdin")
	if pgCode(err) != "23505" {
		t.Fatalf("duplicate in copy: %v", err)
	}
}

func TestCancelRequest(t *testing.T) {
	ts := startServer(t, "")
	c := connect(t, ts, true)
	ctx := context.Background()
	if _, err := c.Exec(ctx, "create table n (x int)"); err != nil {
		t.Fatal(err)
	}
	var vals []string
	for i := 0; i < 2000; i++ {
		vals = append(vals, fmt.Sprintf("(%d)", i))
	}
	if _, err := c.Exec(ctx, "insert into n values "+strings.Join(vals, ",")); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	// 8e9 combinations: only a cancel ends this in test time.
	_, err := c.Exec(qctx, "select count(*) from n a, n b, n c where a.x + b.x = c.x")
	if err == nil {
		t.Fatal("query was not cancelled")
	}
	// The server is still serving.
	c2 := connect(t, ts, true)
	var one int
	if err := c2.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after cancel: %v", err)
	}
}

func TestScramAuthentication(t *testing.T) {
	ts := startServer(t, "s3cret")
	ctx := context.Background()
	c, err := pgx.Connect(ctx, ts.url(":s3cret"))
	if err != nil {
		t.Fatalf("right password: %v", err)
	}
	c.Close(ctx)
	_, err = pgx.Connect(ctx, ts.url(":wrong"))
	if pgCode(err) != "28P01" {
		t.Fatalf("wrong password: %v", err)
	}
}

func TestMalformedInput(t *testing.T) {
	ts := startServer(t, "")
	inputs := [][]byte{
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{0, 0, 0, 8, 0, 3, 0, 0},                   // startup without parameters
		{0, 0, 0, 4},                               // too short
		{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0, 0, 0}, // huge length
	}
	for _, in := range inputs {
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(2 * time.Second))
		nc.Write(in)
		io.Copy(io.Discard, nc)
		nc.Close()
	}
	// A valid startup, then a garbage message.
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(2 * time.Second))
	startup := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	startup = append(startup, "user\x00cumulus\x00\x00"...)
	startup[3] = byte(len(startup))
	nc.Write(startup)
	nc.Write([]byte{'Q', 0, 0, 0, 2, 'x'}) // length smaller than the header
	io.Copy(io.Discard, nc)
	nc.Close()
	c := connect(t, ts, false)
	var s string
	if err := c.QueryRow(context.Background(), "select 'still up'").Scan(&s); err != nil || s != "still up" {
		t.Fatalf("server after bad input: %v", err)
	}
}

// requireTool returns the path of a PostgreSQL client tool, skipping the
// test where it is missing (failing on CI, where it must be installed).
func requireTool(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required on CI: %v", name, err)
		}
		t.Skipf("%s not installed (PostgreSQL 15 client tools): %v", name, err)
	}
	return p
}

func TestPsql(t *testing.T) {
	psql := requireTool(t, "psql")
	ts := startServer(t, "")
	host, port, _ := net.SplitHostPort(ts.addr)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(psql, append([]string{"-h", host, "-p", port, "-U", "cumulus", "-d", "whatever", "-X", "-v", "ON_ERROR_STOP=1"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("-c", "create table t (a int primary key, b varchar(10) not null, c numeric(8,2))", "-c", "insert into t values (1, 'x', 2.5), (2, 'y', null)",
		"-c", `\dt`, "-c", `\d t`, "-c", "select * from t order by a")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	for _, want := range []string{"public | t    | table", `Table "public.t"`, "character varying(10)", "numeric(8,2)", `"t_pkey" PRIMARY KEY, btree (a)`, " 1 | x | 2.50"} {
		if !strings.Contains(out, want) {
			t.Fatalf("psql output lacks %q:\n%s", want, out)
		}
	}
	out, err = run("-c", "select * from nosuch")
	if err == nil || !strings.Contains(out, `relation "nosuch" does not exist`) {
		t.Fatalf("psql error: %v\n%s", err, out)
	}
	out, err = run("-v", "VERBOSITY=verbose", "-c", "select 1/0")
	if err == nil || !strings.Contains(out, "22012") {
		t.Fatalf("psql SQLSTATE: %v\n%s", err, out)
	}
}

func TestPgbench(t *testing.T) {
	pgbench := requireTool(t, "pgbench")
	psql := requireTool(t, "psql")
	ts := startServer(t, "")
	host, port, _ := net.SplitHostPort(ts.addr)
	common := []string{"-h", host, "-p", port, "-U", "cumulus"}
	out, err := exec.Command(pgbench, append(common, "-i", "-s", "1", "bench")...).CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, mode := range []string{"simple", "prepared"} {
		out, err = exec.Command(pgbench, append(common, "-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode, "bench")...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
		}
		if !strings.Contains(string(out), "number of transactions actually processed: 200/200") {
			t.Fatalf("pgbench -M %s did not complete:\n%s", mode, out)
		}
	}
	q := "select (select count(*) from pgbench_accounts), (select count(*) from pgbench_history), " +
		"(select sum(abalance) from pgbench_accounts) = (select sum(delta) from pgbench_history) and " +
		"(select sum(bbalance) from pgbench_branches) = (select sum(delta) from pgbench_history) and " +
		"(select sum(tbalance) from pgbench_tellers) = (select sum(delta) from pgbench_history)"
	out, err = exec.Command(psql, append(common, "-d", "bench", "-tAc", q)...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "100000|400|t" {
		t.Fatalf("balances: %v %q", err, out)
	}
}

// FuzzMessages feeds arbitrary bytes to a connection after a valid
// startup: the server must answer or close, never panic or hang.
func FuzzMessages(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dselect 1\x00"))
	f.Add([]byte("P\x00\x00\x00\x10\x00select $1\x00\x00\x00B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x01\x00\x00S\x00\x00\x00\x04"))
	f.Add([]byte("Q\x00\x00\x00\x1acopy t from stdin\x00d\x00\x00\x00\x081\tx\nc\x00\x00\x00\x04"))
	f.Add([]byte("X\x00\x00\x00\x04"))
	f.Add([]byte{'B', 0xff, 0xff, 0xff, 0xff})
	ts := startServer(f, "")
	f.Fuzz(func(t *testing.T, data []byte) {
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		startup := []byte{0, 0, 0, 0, 0, 3, 0, 0}
		startup = append(startup, "user\x00cumulus\x00\x00"...)
		startup[3] = byte(len(startup))
		nc.Write(append(startup, data...))
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		if _, err := io.Copy(io.Discard, nc); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server hung on %q", data)
			}
		}
	})
}

// TestTrusted: without a password, loopback and the Trust networks are
// trusted, others are not.
func TestTrusted(t *testing.T) {
	s := &Server{Trust: []netip.Prefix{netip.MustParsePrefix("10.0.2.2/32")}}
	for _, c := range []struct {
		ip   string
		want bool
	}{{"10.0.2.2", true}, {"10.0.2.3", false}, {"::ffff:10.0.2.2", true}} {
		if got := s.trusted(&net.TCPAddr{IP: net.ParseIP(c.ip), Port: 1}); got != c.want {
			t.Errorf("trusted(%s) = %v, want %v", c.ip, got, c.want)
		}
	}
}

// TestStartupOptions: settings in the startup "options" parameter (libpq's
// options=, PGOPTIONS) take effect for the session, e.g. a default
// isolation level, and pgx's BeginTx isolation reaches the engine.
func TestStartupOptions(t *testing.T) {
	got := startupOptions(`-c default_transaction_isolation=read\ committed --synchronous-commit=off -cstatement_timeout=0 junk`)
	want := [][2]string{{"default_transaction_isolation", "read committed"}, {"synchronous_commit", "off"}, {"statement_timeout", "0"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("startupOptions: got %q, want %q", got, want)
	}
	ts := startServer(t, "")
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(ts.url("") + `&options=-c%20default_transaction_isolation%3Dread%5C%20committed`)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var iso string
	if err := c.QueryRow(ctx, "show default_transaction_isolation").Scan(&iso); err != nil || iso != "read committed" {
		t.Fatalf("default_transaction_isolation from options: %q %v", iso, err)
	}
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "show transaction_isolation").Scan(&iso); err != nil || iso != "serializable" {
		t.Fatalf("BeginTx(serializable): transaction_isolation %q %v", iso, err)
	}
	tx.Rollback(ctx)
}
