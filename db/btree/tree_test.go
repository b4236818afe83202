package btree_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/cumulusdb/cumulus/db/btree"
	"github.com/cumulusdb/cumulus/db/buffer"
	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

func newPool(t testing.TB, poolPages uint64) *buffer.Pool {
	t.Helper()
	k := linux.Kernel{}
	dev, err := k.OpenBlock(filepath.Join(t.TempDir(), "data"), kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	p, err := buffer.New(buffer.Config{Memory: k.Memory(), Device: dev, MaxPages: 1 << 20, PoolPages: poolPages})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.SetNextPID(1)
	return p
}

func key(i uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], i)
	return b[:]
}

// TestModel runs random puts, deletes, gets and scans against a map, on a
// pool small enough that most pages are evicted and faulted back in.
func TestModel(t *testing.T) {
	for _, poolPages := range []uint64{64, 4096} {
		t.Run(fmt.Sprint("pool", poolPages), func(t *testing.T) {
			p := newPool(t, poolPages)
			tr, err := btree.Create(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, poolPages))
			model := map[string]string{}
			ops, space := 60000, uint64(20000)
			if poolPages < 1000 {
				ops, space = 15000, 6000 // mostly I/O bound: keep it short
			}
			for op := 0; op < ops; op++ {
				k := key(rng.Uint64N(space))
				switch r := rng.IntN(10); {
				case r < 6:
					v := bytes.Repeat([]byte{byte(op)}, rng.IntN(200))
					if err := tr.Put(k, v); err != nil {
						t.Fatal(err)
					}
					model[string(k)] = string(v)
				case r < 8:
					found, err := tr.Delete(k)
					if err != nil {
						t.Fatal(err)
					}
					if _, ok := model[string(k)]; ok != found {
						t.Fatalf("delete %x: found=%v, model %v", k, found, ok)
					}
					delete(model, string(k))
				default:
					v, found, err := tr.Get(k, nil)
					if err != nil {
						t.Fatal(err)
					}
					mv, ok := model[string(k)]
					if ok != found || string(v) != mv {
						t.Fatalf("get %x: %v %x, model %v %x", k, found, v, ok, mv)
					}
				}
			}
			st, err := tr.Check()
			if err != nil {
				t.Fatal(err)
			}
			if st.Entries != len(model) {
				t.Fatalf("tree has %d entries, model %d", st.Entries, len(model))
			}
			if st.Height < 2 {
				t.Fatalf("tree of height %d never split", st.Height)
			}
			keys := make([]string, 0, len(model))
			for k := range model {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var got []string
			err = tr.Scan(nil, nil, func(k, v []byte) bool {
				if model[string(k)] != string(v) {
					t.Fatalf("scan value of %x differs", k)
				}
				got = append(got, string(k))
				return true
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(keys) {
				t.Fatalf("scan returned %d keys, want %d", len(got), len(keys))
			}
			for i := range got {
				if got[i] != keys[i] {
					t.Fatalf("scan key %d: %x want %x", i, got[i], keys[i])
				}
			}
			// Bounded scan with early stop.
			lo, hi := key(1000), key(3000)
			var n int
			tr.Scan(lo, hi, func(k, v []byte) bool {
				if bytes.Compare(k, lo) < 0 || bytes.Compare(k, hi) >= 0 {
					t.Fatalf("scan key %x outside [%x,%x)", k, lo, hi)
				}
				n++
				return n < 10
			})
			if n != 10 {
				t.Fatalf("early-stopped scan delivered %d", n)
			}
			if poolPages == 64 && p.Stats().Evictions == 0 {
				t.Fatal("small pool never evicted")
			}
		})
	}
}

func TestVariableSizesAndLimits(t *testing.T) {
	p := newPool(t, 1024)
	tr, err := btree.Create(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	model := map[string]string{}
	for i := 0; i < 5000; i++ {
		k := make([]byte, 1+rng.IntN(btree.MaxKeySize))
		for j := range k {
			k[j] = byte(rng.IntN(4))
		}
		v := make([]byte, rng.IntN(btree.MaxEntrySize-len(k)+1))
		for j := range v {
			v[j] = byte(i)
		}
		if err := tr.Put(k, v); err != nil {
			t.Fatal(err)
		}
		model[string(k)] = string(v)
	}
	for k, v := range model {
		got, ok, err := tr.Get([]byte(k), nil)
		if err != nil || !ok || string(got) != v {
			t.Fatalf("get: %v %v", ok, err)
		}
	}
	if _, err := tr.Check(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Put(make([]byte, btree.MaxKeySize+1), nil); !errors.Is(err, btree.ErrTooLarge) {
		t.Fatalf("oversized key: %v", err)
	}
	if err := tr.Put([]byte("k"), make([]byte, btree.MaxEntrySize)); !errors.Is(err, btree.ErrTooLarge) {
		t.Fatalf("oversized value: %v", err)
	}
}

// TestConcurrent runs writers and optimistic readers at once. Each writer
// owns a key range and checks its own keys; readers check that any value
// they see is one some writer wrote for that key.
func TestConcurrent(t *testing.T) {
	if raceEnabled {
		t.Skip("optimistic reads race with writers by design")
	}
	for _, poolPages := range []uint64{128, 8192} {
		t.Run(fmt.Sprint("pool", poolPages), func(t *testing.T) {
			p := newPool(t, poolPages)
			tr, err := btree.Create(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			const writers = 4
			perWriter := 40000
			if poolPages < 1000 {
				perWriter = 1500
			}
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			stop := make(chan struct{})
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					for i := 0; i < perWriter; i++ {
						k := key(uint64(rng.IntN(perWriter))*writers + uint64(w))
						if err := tr.Put(k, append(k, bytes.Repeat([]byte{1}, 100)...)); err != nil {
							errs <- err
							return
						}
						if i%3 == 0 {
							if _, err := tr.Delete(key(uint64(rng.IntN(perWriter))*writers + uint64(w))); err != nil {
								errs <- err
								return
							}
						}
					}
				}(w)
			}
			var rg sync.WaitGroup
			for r := 0; r < 2; r++ {
				rg.Add(1)
				go func(r int) {
					defer rg.Done()
					rng := rand.New(rand.NewPCG(uint64(r), 2))
					for {
						select {
						case <-stop:
							return
						default:
						}
						k := key(rng.Uint64N(uint64(perWriter * writers)))
						v, ok, err := tr.Get(k, nil)
						if err != nil {
							errs <- err
							return
						}
						if ok && !bytes.Equal(v[:8], k) {
							errs <- fmt.Errorf("get %x returned value for %x", k, v[:8])
							return
						}
						var prev []byte
						err = tr.Scan(k, nil, func(sk, sv []byte) bool {
							if prev != nil && bytes.Compare(prev, sk) >= 0 {
								errs <- fmt.Errorf("scan out of order")
							}
							if !bytes.Equal(sv[:8], sk) {
								errs <- fmt.Errorf("scan value mismatch")
							}
							prev = append(prev[:0], sk...)
							return len(prev) > 0 && rng.IntN(50) != 0
						})
						if err != nil {
							errs <- err
							return
						}
					}
				}(r)
			}
			wg.Wait()
			close(stop)
			rg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			st, err := tr.Check()
			if err != nil {
				t.Fatal(err)
			}
			if st.Entries == 0 {
				t.Fatal("empty tree")
			}
		})
	}
}
