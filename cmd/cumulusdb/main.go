// Command cumulusdb is the CumulusDB server: the PostgreSQL protocol on
// -listen, the database in -data. It serves until SIGINT/SIGTERM, as a
// Linux process or inside an image (`cumulus up` publishes its port). In
// an image built without the network service, where it cannot listen, it
// runs a short SQL session against its database instead (localSession)
// and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/db/pgwire"
	// Inside an image, kapi's direct implementation (frames, the virtio
	// disk) replaces Linux's: it registers itself and probes at start.
	_ "github.com/cumulusdb/cumulus/kapi/unikernel"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5432", "address to serve the PostgreSQL protocol on")
	data := flag.String("data", "cumulus-data", "data directory")
	device := flag.String("device", "", "block device or file holding the database instead of DATA/cumulus.db (inside an image: /dev/vda, the disk of `cumulus run -disk`)")
	password := flag.String("password", "", "require SCRAM-SHA-256 with this password (default: trust loopback)")
	trust := flag.String("trust", "", "comma-separated client networks trusted without a password besides loopback (e.g. 10.0.2.2/32: the monitor, inside an image)")
	flag.Parse()
	var trusted []netip.Prefix
	for _, s := range strings.Split(*trust, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cumulusdb: -trust: %v\n", err)
			os.Exit(2)
		}
		trusted = append(trusted, p)
	}
	start := time.Now()
	fmt.Printf("cumulusdb: booted; GOMAXPROCS=%d, Go %s\n", runtime.GOMAXPROCS(0), runtime.Version())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := pgwire.Run(ctx, pgwire.Config{Listen: *listen, DataDir: *data, Device: *device, Password: *password, Trust: trusted,
		Ready: func(a net.Addr) {
			fmt.Printf("cumulusdb: serving the PostgreSQL protocol on %v after %v\n", a, time.Since(start).Round(time.Millisecond))
		}})
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
