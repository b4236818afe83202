// Command pgbench compares pgbench (TPC-B-like) throughput of CumulusDB,
// served as a Linux process, with PostgreSQL 15 on the same machine, both
// with durable commits (fsync on, synchronous_commit on), in one run.
//
//	go run ./bench/pgbench -out DIR [-scale 2] [-clients 4] [-threads 2] [-duration 15s]
//
// The full run: -scale 10 -clients 8 -threads 2 -duration 60s.
// It prints a table and writes DIR/pgbench.json and DIR/pgbench.png.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
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

type config struct {
	Scale    int    `json:"scale"`
	Clients  int    `json:"clients"`
	Threads  int    `json:"threads"`
	Duration string `json:"duration"`
	Modes    string `json:"modes"`
	CPUs     int    `json:"cpus"`
}

type result struct {
	System      string  `json:"system"`
	Mode        string  `json:"mode"`
	InitSeconds float64 `json:"init_seconds"`
	TPS         float64 `json:"tps"`
	LatencyMS   float64 `json:"latency_ms"`
	Failed      int64   `json:"failed_transactions"`
	Processed   int64   `json:"transactions"`
	Consistent  bool    `json:"balances_consistent"`
}

type report struct {
	Config  config             `json:"config"`
	Results []result           `json:"results"`
	Ratios  map[string]float64 `json:"ratio_cumulus_over_postgres"`
	Notes   []string           `json:"notes"`
}

func main() {
	out := flag.String("out", "bench-out/pgbench", "output directory")
	scale := flag.Int("scale", 2, "pgbench scale factor")
	clients := flag.Int("clients", 4, "pgbench clients (-c)")
	threads := flag.Int("threads", 2, "pgbench threads (-j)")
	duration := flag.Duration("duration", 15*time.Second, "pgbench run time (-T)")
	modes := flag.String("modes", "simple,prepared", "pgbench query modes (-M), comma separated")
	pgBin := flag.String("pgbin", postgres.DefaultBin, "PostgreSQL server binaries")
	skipPG := flag.Bool("skip-postgres", false, "measure CumulusDB only")
	image := flag.Bool("image", true, "also measure CumulusDB inside the image (KVM: virtio disk, published port)")
	flag.Parse()
	if err := run(*out, config{Scale: *scale, Clients: *clients, Threads: *threads, Duration: duration.String(), Modes: *modes, CPUs: runtime.NumCPU()},
		*duration, *pgBin, *skipPG, *image); err != nil {
		fmt.Fprintln(os.Stderr, "pgbench:", err)
		os.Exit(1)
	}
}

func run(out string, cfg config, dur time.Duration, pgBin string, skipPG, image bool) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		return fmt.Errorf("pgbench client not found: %w", err)
	}
	rep := report{Config: cfg, Ratios: map[string]float64{}}
	modes := strings.Split(cfg.Modes, ",")

	// CumulusDB, in this process, on a fresh database per mode (DROP TABLE
	// does not reclaim space yet, so re-initialising in place would grow
	// the working set).
	tmp, err := os.MkdirTemp("", "cumulus-pgbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for i, mode := range modes {
		port, err := postgres.FreePort()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- pgwire.Run(ctx, pgwire.Config{Listen: fmt.Sprintf("127.0.0.1:%d", port), DataDir: filepath.Join(tmp, fmt.Sprintf("cumulus%d", i)),
				PoolSize: 1 << 30, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
				Ready: func(net.Addr) { close(ready) }})
		}()
		select {
		case <-ready:
		case err := <-done:
			cancel()
			return fmt.Errorf("cumulusdb: %w", err)
		}
		r, err := measure(pgbench, "cumulusdb", mode, port, "cumulus", cfg, dur)
		cancel()
		if derr := <-done; err == nil && derr != nil {
			err = fmt.Errorf("cumulusdb: %w", derr)
		}
		if err != nil {
			return err
		}
		rep.Results = append(rep.Results, r)
		printResult(r)
		os.RemoveAll(filepath.Join(tmp, fmt.Sprintf("cumulus%d", i)))
	}

	if image {
		for i, mode := range modes {
			r, err := measureImage(pgbench, mode, cfg, dur, filepath.Join(tmp, fmt.Sprintf("disk%d.img", i)))
			if err != nil {
				return fmt.Errorf("image: %w", err)
			}
			rep.Results = append(rep.Results, r)
			printResult(r)
		}
	}

	if !skipPG {
		pg, err := postgres.Start(pgBin, tmp)
		if err != nil {
			return err
		}
		stop, pgPort := pg.Stop, pg.Port
		for _, mode := range modes {
			r, err := measure(pgbench, "postgresql-15", mode, pgPort, "postgres", cfg, dur)
			if err != nil {
				stop()
				return err
			}
			rep.Results = append(rep.Results, r)
			printResult(r)
		}
		stop()
		for _, mode := range modes {
			var c, p, im float64
			for _, r := range rep.Results {
				if r.Mode == mode && r.System == "cumulusdb" {
					c = r.TPS
				}
				if r.Mode == mode && r.System == "cumulusdb-image" {
					im = r.TPS
				}
				if r.Mode == mode && r.System == "postgresql-15" {
					p = r.TPS
				}
			}
			if p > 0 {
				rep.Ratios[mode] = c / p
				fmt.Printf("ratio CumulusDB/PostgreSQL TPS (%s protocol): %.2f\n", mode, c/p)
				if im > 0 {
					rep.Ratios[mode+"-image"] = im / p
					fmt.Printf("ratio CumulusDB in the image/PostgreSQL TPS (%s protocol): %.2f\n", mode, im/p)
				}
			}
		}
	}
	rep.Notes = append(rep.Notes,
		"both systems commit durably: CumulusDB with O_DIRECT writes and fdatasync per group commit, PostgreSQL with fsync=on, synchronous_commit=on",
		"CumulusDB runs in this process, PostgreSQL as its own server; pgbench is the same client binary for both")
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "pgbench.json"), b, 0o644); err != nil {
		return err
	}
	return plotReport(rep, filepath.Join(out, "pgbench.png"))
}

func printResult(r result) {
	fmt.Printf("%-14s %-9s init %6.1fs  tps %9.1f  latency %7.2f ms  txns %8d  failed %5d  consistent %v\n",
		r.System, r.Mode, r.InitSeconds, r.TPS, r.LatencyMS, r.Processed, r.Failed, r.Consistent)
}

var (
	tpsRE     = regexp.MustCompile(`tps = ([0-9.]+) \(without`)
	latRE     = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	failedRE  = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)
	processRE = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
)

func measure(pgbench, system, mode string, port int, db string, cfg config, dur time.Duration) (result, error) {
	r := result{System: system, Mode: mode}
	common := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "cumulus"}
	start := time.Now()
	cmd := exec.Command(pgbench, append(append([]string{}, common...), "-i", "-q", "-s", strconv.Itoa(cfg.Scale), db)...)
	if outp, err := cmd.CombinedOutput(); err != nil {
		return r, fmt.Errorf("%s: pgbench -i: %w\n%s", system, err, outp)
	}
	r.InitSeconds = time.Since(start).Seconds()
	args := append(append([]string{}, common...), "-c", strconv.Itoa(cfg.Clients), "-j", strconv.Itoa(cfg.Threads),
		"-T", strconv.Itoa(int(dur.Seconds())), "-M", mode, db)
	outp, err := exec.Command(pgbench, args...).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("%s: pgbench: %w\n%s", system, err, outp)
	}
	s := string(outp)
	m := tpsRE.FindStringSubmatch(s)
	if m == nil {
		return r, fmt.Errorf("%s: no tps in pgbench output:\n%s", system, s)
	}
	r.TPS, _ = strconv.ParseFloat(m[1], 64)
	if m := latRE.FindStringSubmatch(s); m != nil {
		r.LatencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := failedRE.FindStringSubmatch(s); m != nil {
		r.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := processRE.FindStringSubmatch(s); m != nil {
		r.Processed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	// TPC-B invariant: every balance total equals the history's deltas.
	q := "select (select sum(abalance) from pgbench_accounts) = (select sum(delta) from pgbench_history) and " +
		"(select sum(bbalance) from pgbench_branches) = (select sum(delta) from pgbench_history) and " +
		"(select sum(tbalance) from pgbench_tellers) = (select sum(delta) from pgbench_history)"
	psqlOut, err := exec.Command("psql", append(append([]string{}, common...), "-d", db, "-tAc", q)...).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("%s: consistency check: %w\n%s", system, err, psqlOut)
	}
	r.Consistent = strings.TrimSpace(string(psqlOut)) == "t"
	return r, nil
}

func plotReport(rep report, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("pgbench TPC-B, scale %d, %d clients, %s (durable commits)", rep.Config.Scale, rep.Config.Clients, rep.Config.Duration)
	p.Y.Label.Text = "transactions per second"
	systems := []string{"cumulusdb", "postgresql-15"}
	modes := strings.Split(rep.Config.Modes, ",")
	colors := []color.Color{color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}}
	w := vg.Points(24)
	for i, sys := range systems {
		vals := make(plotter.Values, len(modes))
		any := false
		for j, m := range modes {
			for _, r := range rep.Results {
				if r.System == sys && r.Mode == m {
					vals[j] = r.TPS
					any = true
				}
			}
		}
		if !any {
			continue
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = colors[i]
		bars.Offset = vg.Length(i-len(systems)/2)*w + w/2
		p.Add(bars)
		p.Legend.Add(sys, bars)
	}
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = m + " protocol"
		if r, ok := rep.Ratios[m]; ok {
			names[i] += fmt.Sprintf(" (ratio %.2f)", r)
		}
	}
	p.NominalX(names...)
	p.Legend.Top = true
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}
