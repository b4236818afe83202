package postgres

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestStart starts a cluster, finds the database it was asked for, and
// stops it. Without PostgreSQL's binaries it skips (the benchmarks need
// them; the project's tests do not).
func TestStart(t *testing.T) {
	if _, err := os.Stat(DefaultBin + "/initdb"); err != nil {
		t.Skipf("PostgreSQL 15 is not installed: %v", err)
	}
	// Not t.TempDir: its parent is private, and the server may run as the
	// postgres user.
	tmp, err := os.MkdirTemp("", "cumulus-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	s, err := Start(DefaultBin, tmp, "bench")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	out, err := exec.Command("psql", "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", "cumulus", "-d", "bench", "-At",
		"-c", "show fsync", "-c", "show synchronous_commit").CombinedOutput()
	if err != nil || strings.Fields(string(out))[0] != "on" || strings.Fields(string(out))[1] != "on" {
		t.Fatalf("psql: %v\n%s", err, out)
	}
}
