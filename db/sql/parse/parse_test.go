package parse

import (
	"testing"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

func TestSplit(t *testing.T) {
	got := Split("select 1; select ';' -- x;\n; /* ; */ select $$a;b$$;")
	if len(got) != 3 {
		t.Fatalf("Split: %q", got)
	}
}

func TestOwnStatements(t *testing.T) {
	var p Parser
	st, err := p.ParseOne("copy pgbench_accounts from stdin with (freeze on)")
	if err != nil {
		t.Fatal(err)
	}
	c, ok := st.Own.(Copy)
	if !ok || c.Table != "pgbench_accounts" || !c.From || c.Delimiter != '\t' || c.Null != `\N` {
		t.Fatalf("COPY: %+v", st.Own)
	}
	st, _ = p.ParseOne("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';')")
	c = st.Own.(Copy)
	if !c.CSV || !c.Header || c.Delimiter != ';' || len(c.Columns) != 2 || c.Null != "" {
		t.Fatalf("COPY csv: %+v", c)
	}
	st, _ = p.ParseOne("vacuum analyze pgbench_branches")
	if v, ok := st.Own.(Vacuum); !ok || v.Verb != "VACUUM" || len(v.Tables) != 1 {
		t.Fatalf("VACUUM: %+v", st.Own)
	}
	st, _ = p.ParseOne("SET synchronous_commit = off")
	if s, ok := st.Own.(Set); !ok || s.Name != "synchronous_commit" || s.Value != "off" {
		t.Fatalf("SET: %+v", st.Own)
	}
	st, _ = p.ParseOne("SET TIME ZONE 'UTC'")
	if s, ok := st.Own.(Set); !ok || s.Name != "timezone" || s.Value != "UTC" {
		t.Fatalf("SET TIME ZONE: %+v", st.Own)
	}
	st, _ = p.ParseOne("show transaction isolation level")
	if s, ok := st.Own.(Show); !ok || s.Name != "transaction_isolation" {
		t.Fatalf("SHOW: %+v", st.Own)
	}
	if _, err := p.ParseOne("copy t from '/etc/passwd'"); sqlerr.Code(err) != sqlerr.SyntaxError {
		t.Fatalf("COPY from file: %v", err)
	}
}

func TestSQLStatements(t *testing.T) {
	var p Parser
	st, err := p.ParseOne("SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default")
	if err != nil || st.AST == nil {
		t.Fatalf("psql catalog query: %v", err)
	}
	st, err = p.ParseOne("UPDATE t SET a = a + $1 WHERE k = $2")
	if err != nil || st.NumPlaceholders != 2 {
		t.Fatalf("placeholders: %v %d", err, st.NumPlaceholders)
	}
	if _, err := p.ParseOne("SELEC 1"); sqlerr.Code(err) != sqlerr.SyntaxError {
		t.Fatalf("syntax error: %v", err)
	}
	stmts, err := p.Parse("begin; select 1; commit;")
	if err != nil || len(stmts) != 3 {
		t.Fatalf("Parse: %v %d", err, len(stmts))
	}
	stmts, _ = p.Parse("  ")
	if _, ok := stmts[0].Own.(Empty); !ok {
		t.Fatal("empty query")
	}
}

// FuzzParse checks that no input makes the front end panic or hang.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"select 1", "copy t from stdin with (format csv)", "SET a TO 'b'", "select * from t where a in (select b from u)",
		"insert into t values (1, 'x', 2.5), (2, null, -1)", "/* unterminated", "'", "$$", "select $1::int",
		"create table t (a int primary key, b varchar(10) not null default 'x')", "vacuum", "show all", "e'\\x41'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var p Parser
		p.Parse(s)
	})
}
