package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/cumulusdb/cumulus/db/pgwire"
)

// cmdServe runs CumulusDB as a Linux process: the PostgreSQL protocol on
// --listen, the database in --data.
func cmdServe(args []string) (int, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:5432", "address to serve the PostgreSQL protocol on")
	data := fs.String("data", "cumulus-data", "data directory")
	password := fs.String("password", "", "require SCRAM-SHA-256 authentication with this password (default: trust loopback)")
	pool := fs.Int64("pool", 0, "buffer pool size in bytes (0: engine default)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if *password == "" {
		*password = os.Getenv("CUMULUS_PASSWORD")
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return 1, fmt.Errorf("serve: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 1, fmt.Errorf("serve: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := pgwire.Run(ctx, pgwire.Config{Listen: *listen, DataDir: *data, Password: *password, PoolSize: *pool})
	if err != nil {
		return 1, fmt.Errorf("serve: %w", err)
	}
	return 0, nil
}
