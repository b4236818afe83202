package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cumulusdb/cumulus/db/sql/exec"
	"github.com/cumulusdb/cumulus/db/storage"
)

// localSession shows the database working where it cannot listen (inside
// the image until the network device exists): it opens the database in
// dataDir, runs a short SQL session through the same engine a client
// would reach, and prints the answers. A boots table makes durability
// visible: every run adds a row to what the previous runs committed.
func localSession(dataDir string) error {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	start := time.Now()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := storage.Open(filepath.Join(dataDir, "cumulus.db"), &storage.Options{PoolSize: 64 << 20, WALSize: 16 << 20, Buffered: true, Logger: logger})
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer db.Close()
	eng, err := exec.New(db, logger)
	if err != nil {
		return err
	}
	s := eng.NewSession()
	defer s.Close()
	fmt.Printf("cumulusdb: database %s open in %v; running a local SQL session:\n", dataDir, time.Since(start).Round(time.Millisecond))
	stmts := []string{
		"CREATE TABLE IF NOT EXISTS boots (n int PRIMARY KEY, note text)",
		"INSERT INTO boots SELECT coalesce(max(n), 0) + 1, 'booted under KVM' FROM boots",
		"CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, owner text, balance numeric(12,2))",
		"DELETE FROM accounts",
		"INSERT INTO accounts VALUES (1, 'ada', 100.00), (2, 'grace', 250.50), (3, 'edsger', 75.25)",
		"UPDATE accounts SET balance = balance - 25 WHERE owner = 'grace'",
		"SELECT owner, balance FROM accounts ORDER BY balance DESC",
		"SELECT count(*) AS accounts, sum(balance) AS total FROM accounts",
		"SELECT count(*) AS boots_so_far FROM boots",
	}
	for _, sql := range stmts {
		fmt.Printf("cumulus=> %s\n", sql)
		ps, err := s.Parse(sql)
		if err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		for _, p := range ps {
			res, err := s.Execute(p, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
			printResult(res)
		}
	}
	return db.Checkpoint()
}

func printResult(res *exec.Result) {
	if res.Columns == nil {
		fmt.Printf("  %s\n", res.Tag)
		return
	}
	var names []string
	for _, c := range res.Columns {
		names = append(names, c.Name)
	}
	fmt.Printf("  %s\n", strings.Join(names, " | "))
	for _, r := range res.Rows {
		var f []string
		for _, v := range r {
			if v.IsNull() {
				f = append(f, "NULL")
			} else {
				f = append(f, v.String())
			}
		}
		fmt.Printf("  %s\n", strings.Join(f, " | "))
	}
	fmt.Printf("  (%d rows)\n", len(res.Rows))
}
