package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

// cmdUp is the quick start's main job: build the server image, boot it
// with its PostgreSQL port published on the host, show a client session
// against it from the host, then serve until Ctrl-C (or stop at once with
// -once).
func cmdUp(args []string) (int, error) {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	var rf runFlags
	rf.register(fs)
	port := fs.Int("port", 5432, "host port (on 127.0.0.1) for the PostgreSQL protocol")
	once := fs.Bool("once", false, "stop after showing the server answering (scripts, tests)")
	fs.Parse(args)
	root, err := build.ModuleRoot()
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "cumulus: building the CumulusDB server image...\n")
	prog, err := build.Program(filepath.Join(root, "cmd", "cumulusdb"))
	if err != nil {
		return 1, err
	}
	img, err := build.Image("cumulusdb", prog)
	if err != nil {
		return 1, err
	}
	// The database lives in a host directory shared as /data, so it
	// persists from one `cumulus up` to the next.
	dataDir := filepath.Join(root, "out", "cumulusdb-data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return 1, err
	}
	rf.shares = append(rf.shares, dataDir+":/data")
	// Connections through the published port reach the guest from the
	// monitor's address; the port is published on the host's loopback
	// only, so trusting that address trusts the host's local users, as
	// the server trusts loopback outside an image.
	cfg, err := rf.config(append([]string{"cumulusdb", "-data", "/data", "-listen", ":5432", "-trust", boot.GatewayIP + "/32"}, fs.Args()...))
	if err != nil {
		return 2, err
	}
	cfg.Ports = append(cfg.Ports, vmm.PortForward{HostAddr: "127.0.0.1", HostPort: *port, GuestPort: 5432})
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) } // Ctrl-C may come twice
	cfg.Stop = stop
	fmt.Fprintf(os.Stderr, "cumulus: booting it on %d vCPU(s), %s of memory, under KVM (data: %s as /data; port 127.0.0.1:%d)...\n", rf.cpus, rf.mem, dataDir, *port)

	type result struct {
		res vmm.Result
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		res, err := vmm.Run(img, cfg)
		done <- result{res, err}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)

	dsn := fmt.Sprintf("postgres://cumulus@127.0.0.1:%d/cumulus?sslmode=disable", *port)
	sessionErr := make(chan error, 1)
	go func() { sessionErr <- hostSession(dsn, start) }()
	for {
		select {
		case r := <-done:
			if errors.Is(r.err, vmm.ErrTimeout) {
				return 124, nil
			}
			if r.err != nil {
				return 1, r.err
			}
			if r.res.Reason == "stopped" {
				fmt.Fprintf(os.Stderr, "cumulus: stopped after %v; committed transactions are in %s and survive the next boot\n", time.Since(start).Round(time.Millisecond), dataDir)
				return 0, nil
			}
			return r.res.ExitCode, nil
		case err := <-sessionErr:
			if err != nil {
				fmt.Fprintf(os.Stderr, "cumulus: %v\n", err)
				halt()
				<-done
				return 1, nil
			}
			if *once {
				halt()
				continue
			}
			fmt.Printf("cumulus: serving; connect with: psql -h 127.0.0.1 -p %d -U cumulus cumulus   (Ctrl-C stops the image)\n", *port)
		case <-sig:
			halt()
		}
	}
}

// hostSession connects from the host through the published port, as any
// client would, and runs a short SQL session. A boots table makes
// durability visible: every boot adds a row to what earlier ones committed.
func hostSession(dsn string, start time.Time) error {
	ctx := context.Background()
	var conn *pgx.Conn
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := pgx.Connect(ctx, dsn)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server did not answer on %s within 2 minutes: %w", dsn, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer conn.Close(ctx)
	fmt.Printf("cumulus: connected from the host after %v (pgx, %s); a session:\n", time.Since(start).Round(time.Millisecond), strings.Split(dsn, "?")[0])
	stmts := []string{
		"CREATE TABLE IF NOT EXISTS boots (n int PRIMARY KEY, note text)",
		"INSERT INTO boots SELECT coalesce(max(n), 0) + 1, 'booted under KVM, served over TCP' FROM boots",
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
		// The simple protocol returns text, printed as psql would.
		rows, err := conn.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		var names []string
		for _, f := range rows.FieldDescriptions() {
			names = append(names, f.Name)
		}
		n := 0
		if len(names) > 0 {
			fmt.Printf("  %s\n", strings.Join(names, " | "))
		}
		for rows.Next() {
			var f []string
			for _, v := range rows.RawValues() {
				if v == nil {
					f = append(f, "NULL")
				} else {
					f = append(f, string(v))
				}
			}
			fmt.Printf("  %s\n", strings.Join(f, " | "))
			n++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		if len(names) > 0 {
			fmt.Printf("  (%d rows)\n", n)
		} else {
			fmt.Printf("  %s\n", rows.CommandTag())
		}
	}
	return nil
}
