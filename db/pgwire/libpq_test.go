package pgwire

import (
	"database/sql"
	"testing"

	_ "github.com/lib/pq"
)

// TestLibPQ drives the server through database/sql with lib/pq (extended
// protocol with text parameters, unnamed statements, transactions).
func TestLibPQ(t *testing.T) {
	ts := startServer(t, "")
	db, err := sql.Open("postgres", ts.url(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("create table kv (k int primary key, v text, n numeric(6,2))"); err != nil {
		t.Fatal(err)
	}
	stmt, err := db.Prepare("insert into kv values ($1, $2, $3)")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := stmt.Exec(i, "v", float64(i)/4); err != nil {
			t.Fatal(err)
		}
	}
	stmt.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("update kv set v = $1 where k > $2", "w", 3); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var cnt int
	var sum string
	if err := db.QueryRow("select count(*), sum(n) from kv where v = $1", "w").Scan(&cnt, &sum); err != nil || cnt != 2 || sum != "2.25" {
		t.Fatalf("count %d sum %s err %v", cnt, sum, err)
	}
	if _, err := db.Exec("insert into kv values (1, 'dup', 0)"); err == nil {
		t.Fatal("duplicate accepted")
	}
}
