// Command storage compares CumulusDB's storage engine with Pebble and bbolt
// in one run: a random-order load, random point lookups (vmcache's RNDREAD:
// 8-byte keys, 120-byte values), short range scans and the YCSB A/B/C mixes,
// first with the data set in memory and then with a buffer pool a quarter of
// its size. Every write is durable when acknowledged (CumulusDB: commit,
// Pebble: Sync, bbolt: Update with fsync). It prints a table and writes
// storage.json and PNG plots to -out.
//
//	go run ./bench/storage -out /tmp/bench
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	Keys      int     `json:"keys"`
	ValueSize int     `json:"value_size"`
	Batch     int     `json:"batch"`
	Duration  float64 `json:"seconds_per_workload"`
	Readers   int     `json:"reader_threads"`
	Clients   int     `json:"ycsb_clients"`
	ScanLen   int     `json:"scan_length"`
	DataBytes int64   `json:"data_bytes"`
	CPUs      int     `json:"cpus"`
}

type result struct {
	Setting  string  `json:"setting"` // "in-memory" or "4x-pool"
	Workload string  `json:"workload"`
	Engine   string  `json:"engine"`
	Ops      int64   `json:"ops"`
	Seconds  float64 `json:"seconds"`
	OpsPerS  float64 `json:"ops_per_s"`
}

type report struct {
	Config  config             `json:"config"`
	Results []result           `json:"results"`
	Ratios  map[string]float64 `json:"ratios"` // setting/workload/vs-engine -> cumulus ops / engine ops
	Notes   []string           `json:"notes"`
}

func key(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

func value(rng *rand.Rand, n int) []byte {
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(rng.Uint32())
	}
	return v
}

// timed runs op on threads goroutines for d and returns completed ops.
func timed(threads int, d time.Duration, op func(rng *rand.Rand) error) (int64, float64, error) {
	var ops atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(t), uint64(time.Now().UnixNano())))
			for n := 0; ; n++ {
				if n%64 == 0 && time.Now().After(deadline) {
					return
				}
				if err := op(rng); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				ops.Add(1)
			}
		}(t)
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return 0, 0, e.(error)
	}
	return ops.Load(), time.Since(start).Seconds(), nil
}

func main() {
	out := flag.String("out", "out/bench-storage", "directory for storage.json and plots")
	dir := flag.String("dir", "", "directory for the databases (default: a temporary directory)")
	keys := flag.Int("keys", 400_000, "number of keys")
	valSize := flag.Int("value", 120, "value size in bytes")
	batch := flag.Int("batch", 1000, "keys per load transaction")
	dur := flag.Duration("duration", 2*time.Second, "time per measured workload")
	readers := flag.Int("readers", runtime.NumCPU(), "threads for read-only workloads")
	clients := flag.Int("clients", 8, "client threads for YCSB mixes (durable writes benefit from group commit)")
	scanLen := flag.Int("scan", 100, "keys per range scan")
	flag.Parse()
	log.SetFlags(0)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "cumulus-bench-storage")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	cfg := config{Keys: *keys, ValueSize: *valSize, Batch: *batch, Duration: dur.Seconds(),
		Readers: *readers, Clients: *clients, ScanLen: *scanLen, CPUs: runtime.NumCPU(),
		DataBytes: int64(*keys) * int64(8+*valSize)}
	rep := report{Config: cfg, Ratios: map[string]float64{}}
	rep.Notes = append(rep.Notes,
		"writes: one durable transaction per update (YCSB) or per batch (load); CumulusDB commit, Pebble Sync, bbolt Update with fsync",
		"key choice: uniform random over the loaded keys",
		"4x-pool: CumulusDB's pool and Pebble's block cache are a quarter of the raw data size; 'cumulus' uses O_DIRECT so misses go to the device, 'cumulus-buffered' reads through the host page cache as Pebble and bbolt do; bbolt's mmap cannot be limited and always runs from the page cache",
	)
	// Physical footprint of the loaded data in each engine differs; the
	// pool/cache limit is a quarter of the raw key+value bytes.
	poolSmall := cfg.DataBytes / 4
	poolBig := max(cfg.DataBytes*4, 64<<20)

	type opener struct {
		name string
		open func(pool int64) (engine, error)
	}
	engines := []opener{
		{"cumulus", func(pool int64) (engine, error) { return openCumulus(*dir, pool, false) }},
		{"pebble", func(pool int64) (engine, error) { return openPebble(*dir, pool) }},
		{"bbolt", func(pool int64) (engine, error) { return openBolt(*dir) }},
	}
	perm := rand.New(rand.NewPCG(1, 2)).Perm(*keys)
	record := func(setting, workload, eng string, ops int64, secs float64) {
		r := result{Setting: setting, Workload: workload, Engine: eng, Ops: ops, Seconds: secs, OpsPerS: float64(ops) / secs}
		rep.Results = append(rep.Results, r)
		fmt.Printf("%-10s %-10s %-17s %12.0f ops/s\n", setting, workload, eng, r.OpsPerS)
	}
	workloads := func(setting, name string, e engine) {
		n := uint64(*keys)
		must := func(ops int64, secs float64, err error) (int64, float64) {
			if err != nil {
				log.Fatalf("%s %s: %v", name, setting, err)
			}
			return ops, secs
		}
		// Warm the cache (and check the data) before measuring.
		must(timed(*readers, *dur/2, func(rng *rand.Rand) error {
			ok, err := e.get(key(rng.Uint64N(n)))
			if err == nil && !ok {
				err = fmt.Errorf("loaded key missing")
			}
			return err
		}))
		o, s := must(timed(*readers, *dur, func(rng *rand.Rand) error {
			_, err := e.get(key(rng.Uint64N(n)))
			return err
		}))
		record(setting, "rndread", name, o, s)
		o, s = must(timed(*readers, *dur, func(rng *rand.Rand) error {
			_, err := e.scan(key(rng.Uint64N(n)), *scanLen)
			return err
		}))
		record(setting, "scan100", name, o, s)
		for _, mix := range []struct {
			name  string
			reads int // percent
		}{{"ycsb-a", 50}, {"ycsb-b", 95}, {"ycsb-c", 100}} {
			o, s = must(timed(*clients, *dur, func(rng *rand.Rand) error {
				k := key(rng.Uint64N(n))
				if rng.IntN(100) < mix.reads {
					_, err := e.get(k)
					return err
				}
				return e.update(k, value(rng, *valSize))
			}))
			record(setting, mix.name, name, o, s)
		}
	}

	for _, eo := range engines {
		e, err := eo.open(poolBig)
		if err != nil {
			log.Fatalf("open %s: %v", eo.name, err)
		}
		// Random-order load in durable batches.
		rng := rand.New(rand.NewPCG(3, 4))
		start := time.Now()
		ks, vs := make([][]byte, 0, *batch), make([][]byte, 0, *batch)
		for i := 0; i < *keys; i += *batch {
			ks, vs = ks[:0], vs[:0]
			for j := i; j < min(i+*batch, *keys); j++ {
				ks = append(ks, key(uint64(perm[j])))
				vs = append(vs, value(rng, *valSize))
			}
			if err := e.putBatch(ks, vs); err != nil {
				log.Fatalf("load %s: %v", eo.name, err)
			}
		}
		record("in-memory", "load", eo.name, int64(*keys), time.Since(start).Seconds())
		workloads("in-memory", eo.name, e)
		if err := e.close(); err != nil {
			log.Fatalf("close %s: %v", eo.name, err)
		}
	}
	small := append(engines[:1:1], opener{"cumulus-buffered", func(pool int64) (engine, error) { return openCumulus(*dir, pool, true) }})
	small = append(small, engines[1:]...)
	for _, eo := range small {
		e, err := eo.open(poolSmall)
		if err != nil {
			log.Fatalf("open %s: %v", eo.name, err)
		}
		workloads("4x-pool", eo.name, e)
		if err := e.close(); err != nil {
			log.Fatalf("close %s: %v", eo.name, err)
		}
	}
	// Ratios: CumulusDB (O_DIRECT) over each peer, same setting and workload.
	get := func(setting, wl, eng string) float64 {
		for _, r := range rep.Results {
			if r.Setting == setting && r.Workload == wl && r.Engine == eng {
				return r.OpsPerS
			}
		}
		return 0
	}
	fmt.Printf("\n%-10s %-10s %-17s %10s %10s\n", "setting", "workload", "engine", "vs pebble", "vs bbolt")
	for _, setting := range []string{"in-memory", "4x-pool"} {
		for _, wl := range []string{"load", "rndread", "scan100", "ycsb-a", "ycsb-b", "ycsb-c"} {
			for _, ours := range []string{"cumulus", "cumulus-buffered"} {
				c := get(setting, wl, ours)
				if c == 0 {
					continue
				}
				line := fmt.Sprintf("%-10s %-10s %-17s", setting, wl, ours)
				for _, peer := range []string{"pebble", "bbolt"} {
					ratio := c / get(setting, wl, peer)
					name := setting + "/" + wl + "/" + peer
					if ours != "cumulus" {
						name = setting + "/" + wl + "/" + ours + "/" + peer
					}
					rep.Ratios[name] = ratio
					line += fmt.Sprintf(" %9.2fx", ratio)
				}
				fmt.Println(line)
			}
		}
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "storage.json"), js, 0o644); err != nil {
		log.Fatal(err)
	}
	if err := plots(rep, *out); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\nwrote %s\n", filepath.Join(*out, "storage.json"))
}
