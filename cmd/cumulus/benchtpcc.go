package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cumulusdb/cumulus/bench/postgres"
	"github.com/cumulusdb/cumulus/bench/tpcc"
)

// cmdBenchTPCC is `cumulus bench tpcc`: go-tpc's TPC-C (prepare, run,
// check) against this binary's `serve` (CumulusDB as a Linux process) and
// a throwaway PostgreSQL 15 cluster, both with durable commits, in one run
// (bench/tpcc).
func cmdBenchTPCC(args []string) error {
	fs := flag.NewFlagSet("bench tpcc", flag.ExitOnError)
	out := fs.String("out", "out/bench", "directory for tpcc.json and tpcc.png")
	warehouses := fs.Int("warehouses", 2, "TPC-C warehouses")
	threads := fs.Int("threads", 4, "go-tpc threads (-T) for load and run")
	dur := fs.Duration("time", 60*time.Second, "run phase duration")
	pool := fs.Int64("pool", 1<<30, "CumulusDB buffer pool bytes")
	pgBin := fs.String("pgbin", postgres.DefaultBin, "PostgreSQL server binaries")
	skipPG := fs.Bool("skip-postgres", false, "measure CumulusDB only")
	iso := fs.String("isolation", "read-committed", "isolation level for both systems: read-committed or serializable")
	gotpc := fs.String("go-tpc", "", "go-tpc "+tpcc.GoTPCVersion+" binary (default: build it into the user cache)")
	fs.Parse(args)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench tpcc: %w", err)
	}
	rep, err := tpcc.Run(tpcc.Options{Warehouses: *warehouses, Threads: *threads, Duration: *dur, ServeCmd: []string{self, "serve"},
		PoolSize: *pool, PGBin: *pgBin, SkipPostgres: *skipPG, GoTPC: *gotpc, OutDir: *out, Isolation: *iso, Progress: os.Stderr})
	if err != nil {
		return fmt.Errorf("bench tpcc: %w", err)
	}
	fmt.Print(rep.Table())
	for _, r := range rep.Results {
		if !r.CheckPassed {
			return fmt.Errorf("bench tpcc: %s failed go-tpc's consistency check:\n%s", r.System, r.CheckOutput)
		}
	}
	fmt.Fprintf(os.Stderr, "cumulus: wrote %s/tpcc.json and %s/tpcc.png\n", *out, *out)
	return nil
}
