package pgwire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cumulusdb/cumulus/db/sql/exec"
	"github.com/cumulusdb/cumulus/db/storage"
)

// Config configures Run.
type Config struct {
	Listen  string // host:port
	DataDir string // the database file is DataDir/cumulus.db
	// Device, if set, holds the database instead of DataDir/cumulus.db:
	// a block device through kapi ("/dev/vda" inside an image: the
	// virtio disk) or a file.
	Device   string
	Password string // enables SCRAM-SHA-256
	// Trust lists client networks trusted without a password besides
	// loopback (inside an image, the monitor's address: connections
	// through published ports come from it).
	Trust    []netip.Prefix
	PoolSize int64 // buffer pool bytes (0: engine default)
	WALSize  int64 // log ring bytes for a new database (0: 256 MiB)
	Logger   *slog.Logger
	// Ready, if set, receives the listening address once serving.
	Ready func(addr net.Addr)
}

// ErrListen wraps failures to listen, so callers can tell them apart from
// database errors.
var ErrListen = errors.New("pgwire: cannot listen")

// Run opens the database, listens and serves until ctx is done, then
// closes connections and the database (checkpointing it).
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("%w on %s: %w", ErrListen, cfg.Listen, err)
	}
	defer ln.Close()
	path := cfg.Device
	if path == "" {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return fmt.Errorf("pgwire: data directory: %w", err)
		}
		path = filepath.Join(cfg.DataDir, "cumulus.db")
	}
	walSize := cfg.WALSize
	if walSize == 0 {
		walSize = 256 << 20
	}
	db, err := storage.Open(path, &storage.Options{PoolSize: cfg.PoolSize, WALSize: walSize, Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("pgwire: open database: %w", err)
	}
	eng, err := exec.New(db, cfg.Logger)
	if err != nil {
		db.Close()
		return fmt.Errorf("pgwire: %w", err)
	}
	srv := &Server{Engine: eng, Password: cfg.Password, Trust: cfg.Trust, Logger: cfg.Logger}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	cfg.Logger.Info("cumulusdb: serving", "listen", ln.Addr().String(), "data", cfg.DataDir, "scram", cfg.Password != "")
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr())
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	srv.Close()
	if cerr := db.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("pgwire: close database: %w", cerr))
	}
	cfg.Logger.Info("cumulusdb: stopped")
	return err
}
