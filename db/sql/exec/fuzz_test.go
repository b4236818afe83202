package exec

import (
	"strings"
	"testing"
)

// FuzzExecute runs arbitrary SQL against a small schema: errors are fine,
// panics (recovered by Execute as "internal error") are not.
func FuzzExecute(f *testing.F) {
	for _, s := range []string{
		"select * from t where a = 1", "select b, count(*) from t group by b having sum(a) > 1 order by 2 desc limit 1",
		"insert into t values (9, 'z', 1.5)", "update t set c = c * 2 where b like 'x%'", "delete from t where a in (select a from t)",
		"select t.a, u.a from t join t u on u.a = t.a", "select 1/0", "select 'x'::int", "select coalesce(null, 1), nullif(1, 1)",
		"begin; select 1; commit", "copy t from stdin", "select $1", "select * from pg_catalog.pg_class c left join pg_catalog.pg_namespace n on n.oid = c.relnamespace",
	} {
		f.Add(s)
	}
	e, _ := openEngine(f)
	setup := e.NewSession()
	if _, err := query(setup, "create table t (a int primary key, b text, c numeric(8,2)); insert into t values (1, 'x', 1), (2, 'y', null)"); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		s := e.NewSession()
		defer s.Close()
		_, err := query(s, sql)
		if err != nil && strings.HasPrefix(err.Error(), "internal error:") {
			t.Fatalf("%q: %v", sql, err)
		}
	})
}
