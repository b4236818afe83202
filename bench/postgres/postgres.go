// Package postgres starts throwaway PostgreSQL 15 clusters for the
// benchmarks that compare against it (bench/pgbench, bench/tpcc): initdb in
// a temporary directory, trust authentication for user "cumulus", durable
// settings (fsync=on, synchronous_commit=on), shared_buffers=1GB, listening
// on a free loopback port. Run as root, the server runs as the postgres
// user, as PostgreSQL refuses root.
package postgres

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"
)

// DefaultBin is where Debian's postgresql-15 package puts the server.
const DefaultBin = "/usr/lib/postgresql/15/bin"

// Server is a running cluster.
type Server struct {
	Port int
	stop func()
}

// Stop shuts the server down and waits for it.
func (s *Server) Stop() { s.stop() }

// Start initialises a cluster under tmp with the binaries in bin, starts
// it, and returns once it answers queries and the named databases exist.
func Start(bin, tmp string, databases ...string) (*Server, error) {
	initdb := filepath.Join(bin, "initdb")
	if _, err := os.Stat(initdb); err != nil {
		return nil, fmt.Errorf("postgres: server binaries not found in %s: %w", bin, err)
	}
	dir := filepath.Join(tmp, "pg")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	var wrap []string
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("postgres: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chmod(tmp, 0o755)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		wrap = []string{"runuser", "-u", "postgres", "--"}
	}
	command := func(args ...string) *exec.Cmd {
		all := append(append([]string{}, wrap...), args...)
		return exec.Command(all[0], all[1:]...)
	}
	if out, err := command(initdb, "-D", dir, "-U", "cumulus", "-A", "trust", "--no-sync").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("postgres: initdb: %w\n%s", err, out)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	srv := command(filepath.Join(bin, "postgres"), "-D", dir, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "synchronous_commit=on",
		"-c", "shared_buffers=1GB", "-c", "max_connections=100")
	logPath := filepath.Join(tmp, "postgres.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Server{Port: port, stop: func() {
		// runuser does not forward signals: stop the server with pg_ctl.
		if err := command(filepath.Join(bin, "pg_ctl"), "-D", dir, "stop", "-m", "fast").Run(); err != nil {
			srv.Process.Kill()
		}
		srv.Wait()
		logf.Close()
	}}
	psql := filepath.Join(bin, "psql")
	if _, err := os.Stat(psql); err != nil {
		psql = "psql"
	}
	query := func(sql string) error {
		return exec.Command(psql, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "cumulus", "-d", "postgres", "-c", sql).Run()
	}
	deadline := time.Now().Add(30 * time.Second)
	for query("select 1") != nil {
		if time.Now().After(deadline) {
			s.Stop()
			b, _ := os.ReadFile(logPath)
			return nil, errors.New("postgres: the server did not start:\n" + string(b))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, db := range databases {
		if err := query("create database " + db); err != nil {
			s.Stop()
			return nil, fmt.Errorf("postgres: create database %s: %w", db, err)
		}
	}
	return s, nil
}

// FreePort returns a loopback TCP port nothing listens on at the moment.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
