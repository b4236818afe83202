package storage_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/db/storage"
)

// The crash test runs a writer process (this test binary, re-executed) that
// commits transactions with several goroutines and reports each commit on
// stdout once Commit has returned. The parent SIGKILLs it at a random
// moment, reopens the database (recovery) and checks that every writer's
// keys equal the model after exactly its acknowledged transactions, or
// after one more (the one in flight may have become durable just before
// the kill). The next iteration continues from the recovered state, so
// crashes also hit recovery, checkpoints and eviction of earlier data.

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

const (
	crashWriters = 3
	crashKeys    = 2500 // keys per writer
)

func crashOptions() *storage.Options {
	// A pool far smaller than the data and a small log ring, so eviction
	// and checkpoints happen all the time.
	return &storage.Options{PoolSize: 160 * 4096, WALSize: 1 << 20, MaxSize: 1 << 30, Logger: quietLogger}
}

// crashTxn returns the operations of writer w's transaction j: key index ->
// value (nil: delete).
func crashTxn(w, j int) map[int][]byte {
	rng := rand.New(rand.NewPCG(uint64(w), uint64(j)))
	ops := map[int][]byte{}
	n := 1 + rng.IntN(8)
	if rng.IntN(20) == 0 {
		n = 40 // occasionally a larger transaction
	}
	for i := 0; i < n; i++ {
		k := rng.IntN(crashKeys)
		if rng.IntN(5) == 0 {
			ops[k] = nil
			continue
		}
		v := make([]byte, 12+rng.IntN(300))
		binary.BigEndian.PutUint32(v, uint32(w))
		binary.BigEndian.PutUint32(v[4:], uint32(j))
		binary.BigEndian.PutUint32(v[8:], uint32(k))
		for x := 12; x < len(v); x++ {
			v[x] = byte(j + x)
		}
		ops[k] = v
	}
	return ops
}

func crashKey(w, k int) []byte { return []byte(fmt.Sprintf("w%d/k%05d", w, k)) }

func crashIterations() int {
	if s := os.Getenv("CUMULUS_CRASH_ITERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err == nil {
			return n
		}
	}
	return 100
}

// TestCrashChild is the writer; it does nothing unless started by
// TestCrashRecovery.
func TestCrashChild(t *testing.T) {
	path := os.Getenv("CUMULUS_CRASH_DB")
	if path == "" {
		t.Skip("only runs as the crash test's child process")
	}
	start := strings.Split(os.Getenv("CUMULUS_CRASH_START"), ",")
	db, err := storage.Open(path, crashOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	var outMu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < crashWriters; w++ {
		j0, _ := strconv.Atoi(start[w])
		wg.Add(1)
		go func(w, j int) {
			defer wg.Done()
			for ; ; j++ {
				err := db.Update(func(tx *storage.Tx) error {
					tbl, err := tx.Table("t")
					if err != nil {
						return err
					}
					for k, v := range crashTxn(w, j) {
						if v == nil {
							err = tx.Delete(tbl, crashKey(w, k))
						} else {
							err = tx.Put(tbl, crashKey(w, k), v)
						}
						if err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					fmt.Fprintln(os.Stderr, "child commit:", err)
					os.Exit(4)
				}
				outMu.Lock()
				fmt.Fprintf(os.Stdout, "%d %d\n", w, j)
				outMu.Unlock()
			}
		}(w, j0)
	}
	wg.Wait()
}

type writerModel struct {
	next  int // transactions applied
	state map[int][]byte
}

func (m *writerModel) apply(w, j int) {
	for k, v := range crashTxn(w, j) {
		if v == nil {
			delete(m.state, k)
		} else {
			m.state[k] = v
		}
	}
}

func (m *writerModel) clone() *writerModel {
	c := &writerModel{next: m.next, state: make(map[int][]byte, len(m.state))}
	for k, v := range m.state {
		c.state[k] = v
	}
	return c
}

func TestCrashRecovery(t *testing.T) {
	if os.Getenv("CUMULUS_CRASH_DB") != "" {
		t.Skip("child")
	}
	path := filepath.Join(t.TempDir(), "db")
	crashLoop(t, crashIterations(), path, func(starts []string) (*crashChild, error) {
		return startProcessChild(path, starts)
	}, func(rng *rand.Rand) time.Duration {
		return time.Duration(5+rng.IntN(250)) * time.Millisecond
	})
}

// crashChild is one run of the writer: a process or a booted image.
type crashChild struct {
	stdout io.Reader
	kill   func()       // at a random instant
	wait   func() error // nil if the writer died by the kill and nothing else
	stderr func() string
}

func startProcessChild(path string, starts []string) (*crashChild, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CUMULUS_CRASH_DB="+path, "CUMULUS_CRASH_START="+strings.Join(starts, ","))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &crashChild{
		stdout: stdout,
		kill:   func() { cmd.Process.Signal(syscall.SIGKILL) },
		wait: func() error {
			werr := cmd.Wait()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
				return fmt.Errorf("child did not die by the signal: %v", werr)
			}
			return nil
		},
		stderr: stderr.String,
	}, nil
}

// crashLoop creates the database at path, then iters times: starts a
// writer, kills it after delay(rng), recovers on the host and checks every
// writer's keys against the model.
func crashLoop(t *testing.T, iters int, path string, start func(starts []string) (*crashChild, error), delay func(*rand.Rand) time.Duration) {
	t.Helper()
	db, err := storage.Open(path, crashOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *storage.Tx) error { _, err := tx.CreateTable("t"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	models := make([]*writerModel, crashWriters)
	for w := range models {
		models[w] = &writerModel{state: map[int][]byte{}}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	totalAcked, inFlightCommitted := 0, 0
	var recovery time.Duration
	for it := 0; it < iters; it++ {
		starts := make([]string, crashWriters)
		for w, m := range models {
			starts[w] = strconv.Itoa(m.next)
		}
		child, err := start(starts)
		if err != nil {
			t.Fatal(err)
		}
		acked := make([]int, crashWriters)
		for w := range acked {
			acked[w] = models[w].next - 1
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(child.stdout)
			for sc.Scan() {
				var w, j int
				if _, err := fmt.Sscanf(sc.Text(), "%d %d", &w, &j); err == nil && w < crashWriters {
					acked[w] = max(acked[w], j)
				}
			}
		}()
		delay := delay(rng)
		time.Sleep(delay)
		child.kill()
		<-done
		if err := child.wait(); err != nil {
			t.Fatalf("iteration %d: %v\n%s", it, err, child.stderr())
		}

		recStart := time.Now()
		db, err := storage.Open(path, crashOptions())
		if err != nil {
			t.Fatalf("iteration %d: recovery failed: %v", it, err)
		}
		recovery += time.Since(recStart)
		if os.Getenv("CUMULUS_CRASH_VERBOSE") != "" {
			t.Logf("iteration %d: killed after %v, recovery took %v, stats %+v", it, delay, time.Since(recStart), db.Stats())
		}
		got := make([]map[int][]byte, crashWriters)
		for w := range got {
			got[w] = map[int][]byte{}
		}
		err = db.View(func(tx *storage.Tx) error {
			tbl, err := tx.Table("t")
			if err != nil {
				return err
			}
			return tx.Scan(tbl, nil, nil, func(k, v []byte) bool {
				var w, key int
				fmt.Sscanf(string(k), "w%d/k%d", &w, &key)
				got[w][key] = append([]byte(nil), v...)
				return true
			})
		})
		if err != nil {
			t.Fatalf("iteration %d: scan: %v", it, err)
		}
		if err := db.Verify(); err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
		for w, m := range models {
			totalAcked += acked[w] + 1 - m.next
			for j := m.next; j <= acked[w]; j++ {
				m.apply(w, j)
			}
			m.next = acked[w] + 1
			if equalState(got[w], m.state) {
				continue
			}
			more := m.clone()
			more.apply(w, m.next)
			more.next++
			if equalState(got[w], more.state) {
				models[w] = more
				inFlightCommitted++
				continue
			}
			t.Fatalf("iteration %d (killed after %v): writer %d state matches neither %d nor %d transactions (%d keys recovered, model %d)",
				it, delay, w, m.next, m.next+1, len(got[w]), len(m.state))
		}
		if err := db.Close(); err != nil {
			t.Fatalf("iteration %d: close: %v", it, err)
		}
	}
	t.Logf("%d crash iterations, %d acknowledged transactions verified, %d unacknowledged in-flight commits found durable, mean recovery %v",
		iters, totalAcked, inFlightCommitted, recovery/time.Duration(max(iters, 1)))
	if totalAcked == 0 {
		t.Fatal("no transaction was ever acknowledged: the test exercised nothing")
	}
}

func equalState(a, b map[int][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if string(b[k]) != string(v) {
			return false
		}
	}
	return true
}
