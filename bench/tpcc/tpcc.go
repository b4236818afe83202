// Package tpcc runs go-tpc's TPC-C (github.com/pingcap/go-tpc, pinned at
// GoTPCVersion, PostgreSQL driver) against CumulusDB served as a Linux
// process and against PostgreSQL 15 on the same machine, in one run:
// prepare (load), run for a fixed time, then go-tpc's consistency checks.
// Both systems commit durably (CumulusDB: O_DIRECT + fdatasync per group
// commit; PostgreSQL: fsync=on, synchronous_commit=on).
//
// go-tpc is a separate program built from the module proxy into the user
// cache (it is not a dependency of this module: it pulls in a MySQL
// driver, cobra and Prometheus), so the same client binary drives both
// servers.
package tpcc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/cumulusdb/cumulus/bench/postgres"
	"github.com/cumulusdb/cumulus/db/pgwire"
)

// GoTPCVersion is the go-tpc release this package drives.
const GoTPCVersion = "v1.0.12"

const goTPCPkg = "github.com/pingcap/go-tpc/cmd/go-tpc"

// Options configure a run.
type Options struct {
	Warehouses int
	Threads    int           // go-tpc -T for prepare and run
	Duration   time.Duration // run phase
	// ServeCmd starts CumulusDB: the command line of `cumulus serve`
	// without -listen/-data/-pool (e.g. {"/path/cumulus", "serve"}).
	// Empty: serve in this process with pgwire.Run, the code behind
	// `cumulus serve`.
	ServeCmd     []string
	PoolSize     int64  // CumulusDB buffer pool (0: 1 GiB)
	PGBin        string // PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
	SkipPostgres bool
	GoTPC        string // go-tpc binary (empty: built with BuildGoTPC)
	OutDir       string // tpcc.json and tpcc.png (empty: none)
	// Isolation is the level both systems run the transactions at:
	// "read-committed" (the default, PostgreSQL's default) or
	// "serializable"; go-tpc asks for it with BEGIN ISOLATION LEVEL.
	Isolation string
	Progress  io.Writer
}

// Result is one system's measurement.
type Result struct {
	System         string         `json:"system"`
	PrepareSeconds float64        `json:"prepare_seconds"`
	TpmC           float64        `json:"tpmC"`
	TpmTotal       float64        `json:"tpm_total"`
	NewOrderTPS    float64        `json:"new_order_tps"`
	Counts         map[string]int `json:"committed"`
	Errors         map[string]int `json:"errors"`
	CheckSeconds   float64        `json:"check_seconds"`
	CheckPassed    bool           `json:"check_passed"`
	CheckOutput    string         `json:"check_output,omitempty"`
}

// Report is a whole run.
type Report struct {
	Config struct {
		Warehouses int    `json:"warehouses"`
		Threads    int    `json:"threads"`
		Duration   string `json:"duration"`
		GoTPC      string `json:"go_tpc"`
		Isolation  string `json:"isolation"`
		CPUs       int    `json:"cpus"`
	} `json:"config"`
	Results []Result `json:"results"`
	// Ratio is CumulusDB's tpmC over PostgreSQL's (0: not measured).
	Ratio float64  `json:"ratio_tpmC_cumulus_over_postgres"`
	Notes []string `json:"notes"`
}

func (o *Options) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// BuildGoTPC returns the path of a go-tpc GoTPCVersion binary, building
// it (CGO_ENABLED=0, in a scratch module) into dir the first time.
func BuildGoTPC(dir string) (string, error) {
	bin := filepath.Join(dir, "go-tpc-"+GoTPCVersion)
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() {
		return bin, nil
	}
	goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goCmd); err != nil {
		if goCmd, err = exec.LookPath("go"); err != nil {
			return "", fmt.Errorf("build go-tpc: no go command: %w", err)
		}
	}
	mod, err := os.MkdirTemp("", "gotpc-build-")
	if err != nil {
		return "", fmt.Errorf("build go-tpc: %w", err)
	}
	defer os.RemoveAll(mod)
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module gotpcbuild\n\ngo 1.21\n"), 0o644); err != nil {
		return "", fmt.Errorf("build go-tpc: %w", err)
	}
	env := append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod")
	gocmd := func(args ...string) error {
		cmd := exec.Command(goCmd, args...)
		cmd.Dir, cmd.Env = mod, env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build go-tpc: go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	// `go install pkg@version` needs the proxy's version list, which is
	// refused here; requiring the exact version in a scratch module does
	// not.
	if err := gocmd("get", goTPCPkg+"@"+GoTPCVersion); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build go-tpc: %w", err)
	}
	tmp := bin + ".tmp"
	if err := gocmd("build", "-o", tmp, goTPCPkg); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("build go-tpc: %w", err)
	}
	return bin, nil
}

// DefaultGoTPCDir is where BuildGoTPC caches the binary.
func DefaultGoTPCDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "cumulus")
}

// Run measures CumulusDB, then PostgreSQL unless SkipPostgres.
func Run(o Options) (*Report, error) {
	if o.Warehouses <= 0 {
		o.Warehouses = 1
	}
	if o.Threads <= 0 {
		o.Threads = 4
	}
	if o.Duration <= 0 {
		o.Duration = 60 * time.Second
	}
	if o.PoolSize == 0 {
		o.PoolSize = 1 << 30
	}
	if o.PGBin == "" {
		o.PGBin = postgres.DefaultBin
	}
	if o.GoTPC == "" {
		o.progress("tpcc: building go-tpc %s...", GoTPCVersion)
		bin, err := BuildGoTPC(DefaultGoTPCDir())
		if err != nil {
			return nil, err
		}
		o.GoTPC = bin
	}
	rep := &Report{}
	rep.Config.Warehouses, rep.Config.Threads, rep.Config.Duration = o.Warehouses, o.Threads, o.Duration.String()
	switch o.Isolation {
	case "":
		o.Isolation = "read-committed"
	case "read-committed", "serializable":
	default:
		return nil, fmt.Errorf("tpcc: isolation %q: want read-committed or serializable", o.Isolation)
	}
	rep.Config.GoTPC, rep.Config.CPUs, rep.Config.Isolation = GoTPCVersion, runtime.NumCPU(), o.Isolation
	tmp, err := os.MkdirTemp("", "cumulus-tpcc-")
	if err != nil {
		return nil, fmt.Errorf("tpcc: %w", err)
	}
	defer os.RemoveAll(tmp)

	port, stop, err := startCumulus(o, filepath.Join(tmp, "cumulus"))
	if err != nil {
		return nil, fmt.Errorf("tpcc: cumulusdb: %w", err)
	}
	r, err := measure(o, "cumulusdb", port, "cumulus")
	if serr := stop(); err == nil && serr != nil {
		err = fmt.Errorf("cumulusdb server: %w", serr)
	}
	if err != nil {
		return nil, fmt.Errorf("tpcc: cumulusdb: %w", err)
	}
	rep.Results = append(rep.Results, r)
	os.RemoveAll(filepath.Join(tmp, "cumulus"))

	if !o.SkipPostgres {
		pg, err := postgres.Start(o.PGBin, tmp, "tpcc") // go-tpc needs the database to exist
		if err != nil {
			return nil, fmt.Errorf("tpcc: %w", err)
		}
		r, err := measure(o, "postgresql-15", pg.Port, "tpcc")
		pg.Stop()
		if err != nil {
			return nil, fmt.Errorf("tpcc: postgresql: %w", err)
		}
		rep.Results = append(rep.Results, r)
		if r.TpmC > 0 {
			rep.Ratio = rep.Results[0].TpmC / r.TpmC
		}
	}
	rep.Notes = append(rep.Notes,
		"go-tpc "+GoTPCVersion+" tpcc --driver postgres: prepare, run --ignore-error, check; the same client binary for both systems",
		"both systems commit durably: CumulusDB with O_DIRECT writes and fdatasync per group commit, PostgreSQL with fsync=on, synchronous_commit=on",
		"isolation: both systems run the transactions at "+o.Isolation+" (go-tpc --isolation); CumulusDB's read committed leaves reads unvalidated and locks the rows it updates, its serializable is optimistic and fails a transaction whose unlocked reads changed with 40001, PostgreSQL's serializable is SSI; go-tpc counts failures as *_ERR and tpmC counts committed NewOrders only",
		"tpmC is go-tpc's figure (committed NewOrders per minute); new_order_tps = tpmC / 60")
	if o.OutDir != "" {
		if err := rep.Write(o.OutDir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// startCumulus serves a fresh database in dir and returns its port and a
// stop function.
func startCumulus(o Options, dir string) (int, func() error, error) {
	port, err := postgres.FreePort()
	if err != nil {
		return 0, nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if len(o.ServeCmd) > 0 {
		args := append(append([]string{}, o.ServeCmd[1:]...), "-listen", addr, "-data", dir, "-pool", strconv.FormatInt(o.PoolSize, 10))
		cmd := exec.Command(o.ServeCmd[0], args...)
		logf, err := os.Create(dir + ".log")
		if err != nil {
			return 0, nil, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			return 0, nil, err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		stop := func() error {
			defer logf.Close()
			cmd.Process.Signal(os.Interrupt) // serve checkpoints and exits on SIGINT
			select {
			case err := <-done:
				return err
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				return errors.New("cumulus serve did not stop in 60 s")
			}
		}
		if err := waitPort(addr, 30*time.Second, done); err != nil {
			cmd.Process.Kill()
			logf.Close()
			b, _ := os.ReadFile(dir + ".log")
			return 0, nil, fmt.Errorf("%w\n%s", err, b)
		}
		return port, stop, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- pgwire.Run(ctx, pgwire.Config{Listen: addr, DataDir: dir, PoolSize: o.PoolSize,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Ready:  func(net.Addr) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return 0, nil, err
	}
	return port, func() error { cancel(); return <-done }, nil
}

func waitPort(addr string, d time.Duration, exited <-chan error) error {
	deadline := time.Now().Add(d)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("server exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %s", addr, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var (
	summaryRE = regexp.MustCompile(`(?m)^\[Summary\] ([A-Z_]+) - Takes\(s\): ([0-9.]+), Count: ([0-9]+)`)
	tpmcRE    = regexp.MustCompile(`tpmC: ([0-9.]+), tpmTotal: ([0-9.]+)`)
)

// parseRun reads go-tpc's run summary into r.
func parseRun(out string, r *Result) error {
	r.Counts, r.Errors = map[string]int{}, map[string]int{}
	for _, m := range summaryRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[3])
		if name, ok := strings.CutSuffix(m[1], "_ERR"); ok {
			r.Errors[name] = n
		} else {
			r.Counts[m[1]] = n
		}
	}
	m := tpmcRE.FindStringSubmatch(out)
	if m == nil {
		return errors.New("no tpmC in go-tpc's output")
	}
	r.TpmC, _ = strconv.ParseFloat(m[1], 64)
	r.TpmTotal, _ = strconv.ParseFloat(m[2], 64)
	r.NewOrderTPS = r.TpmC / 60
	return nil
}

// checkFailed reports whether go-tpc's check output shows a failure (it
// prints failures and still exits 0).
func checkFailed(out string) bool {
	return strings.Contains(out, "failed") || strings.Contains(out, "panic") || !strings.Contains(out, "Finished")
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func measure(o Options, system string, port int, db string) (Result, error) {
	r := Result{System: system}
	common := []string{"tpcc", "--driver", "postgres", "-H", "127.0.0.1", "-P", strconv.Itoa(port), "-U", "cumulus", "-D", db,
		"--conn-params", "sslmode=disable", "--warehouses", strconv.Itoa(o.Warehouses), "-T", strconv.Itoa(o.Threads)}
	gotpc := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, o.GoTPC, append(append([]string{}, common...), args...)...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(min(runtime.NumCPU(), 2)))
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return string(out), fmt.Errorf("go-tpc %s: no result after %s", args[0], timeout)
		}
		if err != nil {
			return string(out), fmt.Errorf("go-tpc %s: %w\n%s", args[0], err, tail(string(out), 4000))
		}
		return string(out), nil
	}
	o.progress("tpcc: %s: prepare %d warehouse(s)...", system, o.Warehouses)
	start := time.Now()
	out, err := gotpc(time.Duration(o.Warehouses)*20*time.Minute, "prepare", "--no-check")
	if err != nil {
		return r, err
	}
	if strings.Contains(out, "failed") || strings.Contains(out, "panic") {
		return r, fmt.Errorf("go-tpc prepare:\n%s", tail(out, 4000))
	}
	r.PrepareSeconds = time.Since(start).Seconds()
	o.progress("tpcc: %s: loaded in %.1fs; run %s with %d threads...", system, r.PrepareSeconds, o.Duration, o.Threads)
	iso := "2" // database/sql's LevelReadCommitted
	if o.Isolation == "serializable" {
		iso = "6" // LevelSerializable
	}
	out, err = gotpc(o.Duration+5*time.Minute, "run", "--time", o.Duration.String(), "--ignore-error", "--silence", "--interval", "1h", "--isolation", iso)
	if err != nil {
		return r, err
	}
	if err := parseRun(out, &r); err != nil {
		return r, fmt.Errorf("%w:\n%s", err, tail(out, 4000))
	}
	o.progress("tpcc: %s: tpmC %.1f; check...", system, r.TpmC)
	start = time.Now()
	out, err = gotpc(time.Duration(o.Warehouses)*20*time.Minute, "check")
	r.CheckSeconds = time.Since(start).Seconds()
	if err != nil {
		return r, err
	}
	r.CheckPassed = !checkFailed(out)
	if !r.CheckPassed {
		r.CheckOutput = tail(out, 2000)
	}
	return r, nil
}

// Table is a human-readable summary.
func (rep *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "TPC-C (go-tpc %s), %d warehouse(s), %d threads, %s, %s\n", rep.Config.GoTPC, rep.Config.Warehouses, rep.Config.Threads, rep.Config.Duration, rep.Config.Isolation)
	fmt.Fprintf(&b, "%-14s %9s %10s %10s %12s %10s %8s %6s\n", "system", "prepare", "tpmC", "tpmTotal", "NewOrder/s", "NO errors", "check", "")
	for _, r := range rep.Results {
		check := "passed"
		if !r.CheckPassed {
			check = "FAILED"
		}
		fmt.Fprintf(&b, "%-14s %8.1fs %10.1f %10.1f %12.2f %10d %8s\n", r.System, r.PrepareSeconds, r.TpmC, r.TpmTotal, r.NewOrderTPS, r.Errors["NEW_ORDER"], check)
	}
	if rep.Ratio > 0 {
		fmt.Fprintf(&b, "ratio CumulusDB/PostgreSQL tpmC: %.2f\n", rep.Ratio)
	}
	return b.String()
}

// Write stores tpcc.json and tpcc.png in dir.
func (rep *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tpcc: %w", err)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("tpcc: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tpcc.json"), b, 0o644); err != nil {
		return fmt.Errorf("tpcc: %w", err)
	}
	if err := rep.plot(filepath.Join(dir, "tpcc.png")); err != nil {
		return fmt.Errorf("tpcc: plot: %w", err)
	}
	return nil
}

func (rep *Report) plot(path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("TPC-C (go-tpc), %d warehouse(s), %d threads, %s, durable commits", rep.Config.Warehouses, rep.Config.Threads, rep.Config.Duration)
	p.Y.Label.Text = "transactions per minute"
	colors := []color.Color{color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}}
	w := vg.Points(24)
	for i, r := range rep.Results {
		bars, err := plotter.NewBarChart(plotter.Values{r.TpmC, r.TpmTotal}, w)
		if err != nil {
			return err
		}
		bars.Color = colors[i%len(colors)]
		bars.Offset = vg.Length(i-len(rep.Results)/2)*w + w/2*vg.Length(1-len(rep.Results)%2)
		p.Add(bars)
		p.Legend.Add(r.System, bars)
	}
	first := "tpmC (NewOrder)"
	if rep.Ratio > 0 {
		first += fmt.Sprintf(" ratio %.2f", rep.Ratio)
	}
	p.NominalX(first, "all transactions")
	p.Legend.Top, p.Legend.Left = true, true // the tallest bars are on the right
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}
