package exec

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cumulusdb/cumulus/db/sql/datum"
	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
	"github.com/cumulusdb/cumulus/db/storage"
)

func openEngine(t testing.TB) (*Engine, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "db")
	db, err := storage.Open(path, &storage.Options{PoolSize: 64 << 20, WALSize: 16 << 20, Buffered: true})
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return e, path
}

// run executes a query string and returns the last result.
func run(t *testing.T, s *Session, sql string) *Result {
	t.Helper()
	res, err := query(s, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return res
}

func query(s *Session, sql string) (*Result, error) {
	ps, err := s.Parse(sql)
	if err != nil {
		return nil, err
	}
	var res *Result
	for _, p := range ps {
		if res, err = s.Execute(p, nil); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func rows(res *Result) string {
	var lines []string
	for _, r := range res.Rows {
		var f []string
		for _, v := range r {
			if v.IsNull() {
				f = append(f, "NULL")
			} else {
				f = append(f, v.String())
			}
		}
		lines = append(lines, strings.Join(f, ","))
	}
	return strings.Join(lines, ";")
}

func expect(t *testing.T, s *Session, sql, want string) {
	t.Helper()
	if got := rows(run(t, s, sql)); got != want {
		t.Fatalf("%s:\n got %q\nwant %q", sql, got, want)
	}
}

func expectErr(t *testing.T, s *Session, sql, code string) {
	t.Helper()
	_, err := query(s, sql)
	if sqlerr.Code(err) != code {
		t.Fatalf("%s: error %v (code %s), want code %s", sql, err, sqlerr.Code(err), code)
	}
}

func TestDDLAndDML(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, `create table emp (id int primary key, name varchar(20) not null, dept int, salary numeric(10,2), hired date, active boolean default true)`)
	res := run(t, s, `insert into emp (id, name, dept, salary, hired) values
		(1, 'ann', 10, 5000.50, '2020-01-02'), (2, 'bob', 20, 4000, '2021-03-04'), (3, 'cy', 10, 6000, '2019-05-06'), (4, 'di', null, null, null)`)
	if res.Tag != "INSERT 0 4" {
		t.Fatalf("tag %q", res.Tag)
	}
	expect(t, s, "select name, salary, active from emp where id = 1", "ann,5000.50,t")
	expect(t, s, "select id from emp where dept = 10 order by salary desc", "3;1")
	expect(t, s, "select dept, count(*), sum(salary) from emp group by dept having count(*) > 1", "10,2,11000.50")
	expect(t, s, "select count(*), count(dept), min(name), max(hired) from emp", "4,3,ann,2021-03-04")
	expect(t, s, "select id from emp order by id limit 2 offset 1", "2;3")
	expect(t, s, "select id from emp where dept is null", "4")
	expect(t, s, "select id from emp where name like 'b%' or id between 3 and 3 order by 1", "2;3")
	expect(t, s, "select id from emp where id in (select id from emp where dept = 20)", "2")
	expect(t, s, "select e.id from emp e where exists (select 1 from emp f where f.dept = e.dept and f.id <> e.id) order by 1", "1;3")
	expect(t, s, "select case when salary > 4500 then 'hi' else 'lo' end from emp where id in (1, 2) order by id", "hi;lo")
	expect(t, s, "select distinct dept from emp where dept is not null order by dept", "10;20")
	expect(t, s, "select id * 2 + 1, upper(name) || '!' from emp where id = 2", "5,BOB!")
	res = run(t, s, "update emp set salary = salary * 2 where dept = 10")
	if res.Tag != "UPDATE 2" {
		t.Fatalf("tag %q", res.Tag)
	}
	expect(t, s, "select sum(salary) from emp", "26001.00")
	run(t, s, "delete from emp where id = 4")
	expect(t, s, "select count(*) from emp", "3")
	// Errors with SQLSTATEs.
	expectErr(t, s, "insert into emp (id, name) values (1, 'dup')", sqlerr.UniqueViolation)
	expectErr(t, s, "insert into emp (id) values (9)", sqlerr.NotNullViolation)
	expectErr(t, s, "select * from nosuch", sqlerr.UndefinedTable)
	expectErr(t, s, "select nosuch from emp", sqlerr.UndefinedColumn)
	expectErr(t, s, "select 1/0", sqlerr.DivisionByZero)
	expectErr(t, s, "insert into emp (id, name) values ('x', 'y')", sqlerr.InvalidText)
	expectErr(t, s, "insert into emp (id, name) values (10, 'a name much too long for it')", sqlerr.StringTruncation)
	expectErr(t, s, "select name, count(*) from emp", sqlerr.GroupingError)
	expectErr(t, s, "create table emp (x int)", sqlerr.DuplicateTable)
	expectErr(t, s, "frobnicate the database", sqlerr.SyntaxError)
	// TRUNCATE and DROP.
	run(t, s, "truncate emp")
	expect(t, s, "select count(*) from emp", "0")
	run(t, s, "drop table emp")
	expectErr(t, s, "select * from emp", sqlerr.UndefinedTable)
	run(t, s, "drop table if exists emp")
}

func TestJoins(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table d (id int primary key, name text)")
	run(t, s, "create table p (id int primary key, d int, v int)")
	run(t, s, "create table big (k int, v int)") // no key: hash join path
	run(t, s, "insert into d values (1, 'one'), (2, 'two'), (3, 'three')")
	run(t, s, "insert into p values (10, 1, 5), (11, 1, 6), (12, 2, 7), (13, 9, 8)")
	run(t, s, "insert into big values (1, 100), (2, 200), (2, 201)")
	expect(t, s, "select p.id, d.name from p join d on d.id = p.d order by p.id", "10,one;11,one;12,two")
	expect(t, s, "select p.id, d.name from p left join d on d.id = p.d order by p.id", "10,one;11,one;12,two;13,NULL")
	expect(t, s, "select d.name, sum(p.v) from d, p where p.d = d.id group by d.name order by 1", "one,11;two,7")
	expect(t, s, "select d.id, b.v from d join big b on b.k = d.id order by 2", "1,100;2,200;2,201")
	expect(t, s, "select count(*) from d cross join p", "12")
	expect(t, s, "select x.n from (select name as n from d where id > 1) x order by 1", "three;two")
}

func TestIndexes(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table c (w int, d int, id int, last varchar(16), bal numeric(12,2), primary key (w, d, id))")
	for w := 1; w <= 2; w++ {
		run(t, s, "insert into c values ("+itoa(w)+", 1, 1, 'ABLE', 10), ("+itoa(w)+", 1, 2, 'BAKER', 20), ("+itoa(w)+", 2, 1, 'ABLE', 30)")
	}
	run(t, s, "create index c_last on c (w, d, last)")
	expect(t, s, "select id, bal from c where w = 2 and d = 1 and last = 'ABLE'", "1,10.00")
	run(t, s, "update c set last = 'CHARLIE' where w = 2 and d = 1 and id = 1")
	expect(t, s, "select id from c where w = 2 and d = 1 and last = 'ABLE'", "")
	expect(t, s, "select id from c where w = 2 and d = 1 and last = 'CHARLIE'", "1")
	expect(t, s, "select count(*) from c where w = 1 and d = 1", "2")
	expect(t, s, "select id from c where w = 1 and d = 1 and id >= 2", "2")
	expectErr(t, s, "create unique index c_u on c (bal)", sqlerr.UniqueViolation) // 10.00 twice
	run(t, s, "create unique index c_u on c (w, bal)")
	expectErr(t, s, "insert into c values (1, 3, 1, 'X', 10)", sqlerr.UniqueViolation)
	run(t, s, "delete from c where w = 1")
	expect(t, s, "select count(*) from c where w = 1 and d = 1 and last = 'ABLE'", "0")
}

func TestTransactions(t *testing.T) {
	e, path := openEngine(t)
	a, b := e.NewSession(), e.NewSession()
	run(t, a, "create table kv (k int primary key, v int)")
	run(t, a, "insert into kv values (1, 10), (2, 20)")
	run(t, a, "begin")
	run(t, a, "update kv set v = 11 where k = 1")
	expect(t, b, "select v from kv where k = 1", "10") // no dirty read
	run(t, a, "rollback")
	expect(t, b, "select v from kv where k = 1", "10")
	run(t, a, "begin")
	expectErr(t, a, "select nosuch from kv", sqlerr.UndefinedColumn)
	if a.TxStatus() != TxFailed {
		t.Fatal("transaction should be failed")
	}
	expectErr(t, a, "select 1", sqlerr.InFailedTx)
	if res := run(t, a, "commit"); res.Tag != "ROLLBACK" {
		t.Fatalf("COMMIT of failed transaction: %q", res.Tag)
	}
	// FOR UPDATE serialises read-modify-write across sessions.
	var wg sync.WaitGroup
	var errs []error
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := e.NewSession()
			for i := 0; i < 25; i++ {
				err := func() error {
					if _, err := query(s, "begin"); err != nil {
						return err
					}
					res, err := query(s, "select v from kv where k = 2 for update")
					if err != nil {
						query(s, "rollback")
						return err
					}
					v := res.Rows[0][0].I
					if _, err := query(s, "update kv set v = "+itoa(int(v+1))+" where k = 2"); err != nil {
						query(s, "rollback")
						return err
					}
					_, err = query(s, "commit")
					return err
				}()
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("FOR UPDATE increments failed: %v", errors.Join(errs...))
	}
	expect(t, b, "select v from kv where k = 2", "120")
	// Durability: reopen and find the data.
	run(t, a, "set synchronous_commit = off")
	run(t, a, "insert into kv values (3, 30)")
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(path, &storage.Options{PoolSize: 64 << 20, Buffered: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e2, err := New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, e2.NewSession(), "select k, v from kv order by k", "1,10;2,120;3,30")
}

func TestDeadlockDetected(t *testing.T) {
	e, _ := openEngine(t)
	a, b := e.NewSession(), e.NewSession()
	run(t, a, "create table kv (k int primary key, v int)")
	run(t, a, "insert into kv values (1, 0), (2, 0)")
	run(t, a, "begin")
	run(t, b, "begin")
	run(t, a, "update kv set v = 1 where k = 1")
	run(t, b, "update kv set v = 2 where k = 2")
	done := make(chan error, 1)
	go func() { _, err := query(a, "update kv set v = 1 where k = 2"); done <- err }()
	_, errB := query(b, "update kv set v = 2 where k = 1")
	if errB == nil {
		// b got the lock after a failed.
		errA := <-done
		if sqlerr.Code(errA) != sqlerr.DeadlockDetected {
			t.Fatalf("a: %v", errA)
		}
		return
	}
	if sqlerr.Code(errB) != sqlerr.DeadlockDetected {
		t.Fatalf("b: %v", errB)
	}
	run(t, b, "rollback")
	if err := <-done; err != nil {
		t.Fatalf("a after b rolled back: %v", err)
	}
	run(t, a, "commit")
	expect(t, b, "select v from kv order by k", "1;1")
}

func TestCopyAndPrimaryKeyRebuild(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table acc (aid int not null, bid int, bal int, filler char(20))")
	res := run(t, s, "copy acc from stdin")
	if res.Copy == nil {
		t.Fatal("no CopyIn")
	}
	var data strings.Builder
	const n = 50000
	for i := 1; i <= n; i++ {
		data.WriteString(itoa(i) + "\t" + itoa((i-1)/1000+1) + "\t0\t\\N\n")
	}
	// Feed in odd-sized chunks so records straddle writes.
	d := data.String()
	for len(d) > 0 {
		k := min(len(d), 777)
		if err := res.Copy.Write([]byte(d[:k])); err != nil {
			t.Fatal(err)
		}
		d = d[k:]
	}
	fin, err := res.Copy.Finish()
	if err != nil || fin.Tag != "COPY 50000" {
		t.Fatalf("copy: %v %v", fin, err)
	}
	run(t, s, "alter table acc add primary key (aid)")
	expect(t, s, "select count(*), sum(bid) from acc", "50000,1275000")
	expect(t, s, "select bid from acc where aid = 31337", "32")
	expectErr(t, s, "insert into acc values (5, 1, 1, '')", sqlerr.UniqueViolation)
	// Bad COPY data reports the line.
	res = run(t, s, "copy acc (aid, bid) from stdin with (format csv)")
	res.Copy.Write([]byte("100001,1\nnot-a-number,2\n"))
	if _, err := res.Copy.Finish(); sqlerr.Code(err) != sqlerr.InvalidText {
		t.Fatalf("bad copy: %v", err)
	}
	expect(t, s, "select count(*) from acc where aid = 100001", "0")
}

func TestPreparedStatements(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table kv (k int primary key, v text)")
	ins, err := s.Prepare("insert into kv values ($1, $2)", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ins.ParamTypes) != 2 || ins.ParamTypes[0] != datum.TInt4 || ins.ParamTypes[1] != datum.TText {
		t.Fatalf("param types %v", ins.ParamTypes)
	}
	for i := 0; i < 3; i++ {
		if _, err := s.Execute(ins, []datum.Value{datum.Int(int64(i)), datum.Text("v" + itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := s.Prepare("select v from kv where k = $1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cols := sel.Columns(); len(cols) != 1 || cols[0].Name != "v" || cols[0].Type != datum.TText {
		t.Fatalf("columns %+v", cols)
	}
	res, err := s.Execute(sel, []datum.Value{datum.Int(2)})
	if err != nil || rows(res) != "v2" {
		t.Fatalf("select: %v %v", res, err)
	}
	// The plan survives DDL elsewhere (replanned on catalog change).
	run(t, s, "create table other (x int)")
	res, err = s.Execute(sel, []datum.Value{datum.Int(1)})
	if err != nil || rows(res) != "v1" {
		t.Fatalf("select after DDL: %v %v", res, err)
	}
}

func TestCatalogQueries(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table t (a int primary key, b text)")
	expect(t, s, "select relname from pg_catalog.pg_class where relkind = 'r' order by 1", "t")
	expect(t, s, "select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a where a.attrelid = 't'::regclass and a.attnum > 0 order by a.attnum",
		"a,integer;b,text")
	expect(t, s, "select count(*) from information_schema.tables where table_name = 't'", "1")
	expect(t, s, "show server_version", "15.0")
}

// TestIsolationLevels: SERIALIZABLE (the default) fails a transaction
// whose unlocked read was changed by a concurrent commit; READ COMMITTED
// (per transaction, per session, or by default_transaction_isolation)
// commits it, and concurrent "v = v + 1" updates lose nothing.
func TestIsolationLevels(t *testing.T) {
	e, _ := openEngine(t)
	a, b := e.NewSession(), e.NewSession()
	run(t, a, "create table w (id int primary key, tax int, ytd int)")
	run(t, a, "create table o (id int primary key, w int)")
	run(t, a, "insert into w values (1, 5, 0)")
	expect(t, a, "show transaction_isolation", "serializable")
	// NewOrder-style: read the warehouse, a Payment updates it, insert.
	history := func(begin string, id int) error {
		run(t, a, begin)
		run(t, a, "select tax from w where id = 1")
		run(t, b, "update w set ytd = ytd + 10 where id = 1")
		run(t, a, "insert into o values ("+itoa(id)+", 1)")
		_, err := query(a, "commit")
		return err
	}
	if err := history("begin", 1); sqlerr.Code(err) != sqlerr.SerializationFailure {
		t.Fatalf("serializable: %v, want 40001", err)
	}
	if err := history("begin isolation level read committed", 2); err != nil {
		t.Fatalf("read committed: %v", err)
	}
	if err := history("start transaction isolation level repeatable read", 3); sqlerr.Code(err) != sqlerr.SerializationFailure {
		t.Fatalf("repeatable read (runs serializable): %v, want 40001", err)
	}
	run(t, a, "begin")
	expect(t, a, "show transaction_isolation", "serializable")
	run(t, a, "set transaction isolation level read committed")
	expect(t, a, "show transaction_isolation", "read committed")
	run(t, a, "select 1")
	expectErr(t, a, "set transaction isolation level serializable", sqlerr.ActiveTx)
	run(t, a, "rollback")
	if res := run(t, a, "set transaction isolation level read committed"); len(res.Notices) == 0 {
		t.Error("SET TRANSACTION outside a transaction block gave no warning")
	}
	expectErr(t, a, "set default_transaction_isolation = 'sometimes'", sqlerr.InvalidParameterValue)
	run(t, a, "set session characteristics as transaction isolation level read committed")
	expect(t, a, "show default_transaction_isolation", "read committed")
	if err := history("begin", 4); err != nil {
		t.Fatalf("session default read committed: %v", err)
	}
	// A serializable transaction in a read-committed session is validated.
	if err := history("begin isolation level serializable", 5); sqlerr.Code(err) != sqlerr.SerializationFailure {
		t.Fatalf("BEGIN SERIALIZABLE under a read-committed default: %v, want 40001", err)
	}
	run(t, a, "begin")
	run(t, a, "set transaction isolation level serializable")
	run(t, a, "select tax from w where id = 1")
	run(t, b, "update w set ytd = ytd + 10 where id = 1")
	run(t, a, "insert into o values (6, 1)")
	if _, err := query(a, "commit"); sqlerr.Code(err) != sqlerr.SerializationFailure {
		t.Fatalf("SET TRANSACTION SERIALIZABLE under a read-committed default: %v, want 40001", err)
	}
	expect(t, a, "select id from o order by id", "2;4")

	// Lost updates: concurrent read-committed increments all count,
	// because UPDATE locks the row before it reads it.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := e.NewSession()
			if _, err := query(s, "set default_transaction_isolation = 'read committed'"); err != nil {
				errs <- err
				return
			}
			for i := 0; i < 25; i++ {
				if _, err := query(s, "begin; select tax from w where id = 1; update w set ytd = ytd + 1 where id = 1; commit"); err != nil {
					errs <- err
					query(s, "rollback")
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("read-committed increment: %v", err)
	}
	expect(t, b, "select ytd from w", "160") // 6 × 10 from the histories + 100

	// Unique indexes stay unique under read committed.
	run(t, a, "create table u (id int primary key, email text)")
	run(t, a, "create unique index u_email on u (email)")
	var ok, dup int
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			s := e.NewSession()
			_, err := query(s, "begin isolation level read committed; insert into u values ("+itoa(10+w)+", 'same@example.com'); commit")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case sqlerr.Code(err) == sqlerr.UniqueViolation:
				dup++
				query(s, "rollback")
			default:
				t.Errorf("insert: %v", err)
			}
		}(w)
	}
	wg.Wait()
	if ok != 1 || dup != 3 {
		t.Errorf("unique index under read committed: %d inserts succeeded, %d duplicates refused; want 1 and 3", ok, dup)
	}
}
