// Command cumulusdb is the CumulusDB server: the PostgreSQL protocol on
// -listen, the database in -data. As a Linux process it serves until
// SIGINT/SIGTERM. Inside the unikernel image there is no network device
// yet (the devices issue adds it): the program then reports the machine it
// booted on, says that it cannot listen, runs a short SQL session against
// its database (localSession) and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/db/pgwire"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5432", "address to serve the PostgreSQL protocol on")
	data := flag.String("data", "cumulus-data", "data directory")
	password := flag.String("password", "", "require SCRAM-SHA-256 with this password (default: trust loopback)")
	flag.Parse()
	start := time.Now()
	fmt.Printf("cumulusdb: booted; GOMAXPROCS=%d, Go %s\n", runtime.GOMAXPROCS(0), runtime.Version())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := pgwire.Run(ctx, pgwire.Config{Listen: *listen, DataDir: *data, Password: *password})
	switch {
	case err == nil:
	case errors.Is(err, pgwire.ErrListen) && noNetwork(err):
		fmt.Printf("cumulusdb: no network here (%v) after %v: clients cannot connect until the image has a network device\n",
			err, time.Since(start).Round(time.Microsecond))
		if err := localSession(*data); err != nil {
			fmt.Fprintln(os.Stderr, "cumulusdb:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "cumulusdb:", err)
		os.Exit(1)
	}
}

// noNetwork reports whether listening failed because sockets do not exist
// (as in the image today), not because of the address.
func noNetwork(err error) bool {
	return errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPROTONOSUPPORT)
}
