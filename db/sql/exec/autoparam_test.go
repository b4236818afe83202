package exec

import (
	"fmt"
	"testing"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

func TestShape(t *testing.T) {
	for _, c := range []struct {
		sql, masked string
		consts      []constant
	}{
		{"UPDATE pgbench_accounts SET abalance = abalance + -4471 WHERE aid = 61377;", "UPDATE pgbench_accounts SET abalance = abalance + -$1 WHERE aid = $2",
			[]constant{{"4471", true}, {"61377", true}}},
		{"select\n* from t1 where name = 'it''s' and x > 1.5e3 and y < .5", "select\n* from t1 where name = $1 and x > $2 and y < $3",
			[]constant{{"it's", false}, {"1.5e3", true}, {".5", true}}},
		{`select "col 1" from "T2" where d = '2024-01-02'::date`, `select "col 1" from "T2" where d = $1::date`, []constant{{"2024-01-02", false}}},
		{"select a from t where x = $1", "", nil},         // already parameterised
		{"select 1; select 2", "", nil},                   // two statements
		{"select E'a\\n' from t", "", nil},                // prefixed string
		{"select a from t -- 1\n", "", nil},               // comment
		{"select a from t", "", nil},                      // no constants
		{"select 1abc from t", "", nil},                   // odd token
		{"select $$x$$", "", nil},                         // dollar quote
		{"insert into t values ('unterminated)", "", nil}, // left to the parser
		{"insert into t values (1, 'a'), (2, 'b')", "insert into t values ($1, $2), ($3, $4)",
			[]constant{{"1", true}, {"a", false}, {"2", true}, {"b", false}}},
	} {
		masked, consts, ok := shape(c.sql)
		if masked != c.masked || fmt.Sprint(consts) != fmt.Sprint(c.consts) || ok != (c.masked != "") {
			t.Errorf("shape(%q) = %q %v %v; want %q %v", c.sql, masked, consts, ok, c.masked, c.consts)
		}
	}
}

// TestTemplates: statements that differ only in constants run as one
// template per session and give what the literal statements give,
// including where a template cannot stand for them.
func TestTemplates(t *testing.T) {
	e, _ := openEngine(t)
	s := e.NewSession()
	run(t, s, "create table acc (aid int primary key, bal int, name text, f double precision, n numeric(10,2))")
	for i := 1; i <= 5; i++ {
		run(t, s, fmt.Sprintf("insert into acc values (%d, %d, 'n%d', %d.5, %d.25)", i, i*10, i, i, i))
	}
	if len(s.templates) != 1 {
		t.Fatalf("%d templates after five inserts of one shape, want 1", len(s.templates))
	}
	for i := 1; i <= 5; i++ {
		run(t, s, fmt.Sprintf("update acc set bal = bal + -%d where aid = %d", i, i))
	}
	expect(t, s, "select aid, bal from acc where aid >= 4 order by aid", "4,36;5,45")
	expect(t, s, "select aid, bal from acc where aid >= 2 order by aid", "2,18;3,27;4,36;5,45")
	// 1.5 is numeric: bal + 1.5 is numeric, rounded on assignment to int
	// (the template, which typed the parameter int, cannot hold it).
	run(t, s, "update acc set bal = bal + 1.5 where aid = 1")
	expect(t, s, "select bal from acc where aid = 1", "11")
	// Too large for int4 arithmetic: the literal is int8.
	expect(t, s, "select bal + 5000000000 from acc where aid = 1", "5000000011")
	expect(t, s, "select bal + 1 from acc where aid = 1", "12")
	// Constants whose type comes from the literal itself stay literal.
	expect(t, s, "select 7, 'x', aid from acc where aid = 1", "7,x,1")
	expect(t, s, "select 8, 'y', aid from acc where aid = 2", "8,y,2")
	// Quoted strings, floats and numerics through parameters.
	expect(t, s, "select aid from acc where name = 'n3'", "3")
	expect(t, s, "select aid from acc where name = 'n''4'", "")
	expect(t, s, "select aid from acc where f > 3.9 order by aid", "4;5")
	expect(t, s, "select aid from acc where n = 2.25", "2")
	// A number where a string was (and back) takes the plain path.
	expect(t, s, "select aid from acc where name = 'n5'", "5")
	expectErr(t, s, "select aid from acc where name = 5", sqlerr.UndefinedFunction)
	// Errors are the plain path's: an unknown table, before and after it
	// exists (the failed shape is retried after DDL).
	expectErr(t, s, "select v from later where k = 1", sqlerr.UndefinedTable)
	run(t, s, "create table later (k int primary key, v text)")
	run(t, s, "insert into later values (1, 'one')")
	expect(t, s, "select v from later where k = 1", "one")
	// DDL re-plans templates: same shape, table rebuilt with other types.
	run(t, s, "drop table later")
	run(t, s, "create table later (k text primary key, v int)")
	run(t, s, "insert into later values ('1', 42)")
	expect(t, s, "select v from later where k = '1'", "42")
	// Inside transactions, and constraint errors report the right value.
	run(t, s, "begin")
	run(t, s, "insert into later values ('2', 43)")
	expectErr(t, s, "insert into later values ('2', 44)", sqlerr.UniqueViolation)
	run(t, s, "rollback")
	expect(t, s, "select count(*) from later", "1")
}
