// Package workload is the snapshot benchmark's and tests' program side:
// an area of 8-byte records, OLTP writers, an OLAP scan on a snapshot,
// and an exactness check of snapshots under concurrent writers. It runs
// the same on Linux and inside the image (through kapi.Default()).
package workload

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kapi"
)

// Area is a range of 8-byte records owned through kapi.
type Area struct {
	K      kapi.Kernel
	Region kapi.Region
	Mem    []byte
	Words  []uint64
}

// NewArea reserves and allocates size bytes (2 MiB aligned; 1 GiB aligned
// from 1 GiB on, so the unikernel shares whole GiBs by one entry) and
// touches every page, so the area is resident before any snapshot.
func NewArea(k kapi.Kernel, size uintptr) (*Area, error) {
	align := uintptr(2 << 20)
	if size >= 1<<30 {
		align = 1 << 30
	}
	m := k.Memory()
	r, err := m.Reserve(size, align)
	if err != nil {
		return nil, err
	}
	if err := m.Allocate(r, 0, size); err != nil {
		m.Free(r)
		return nil, err
	}
	w := unsafe.Slice((*uint64)(unsafe.Pointer(&r.Mem[0])), size/8)
	for i := 0; i < len(w); i += 512 {
		w[i] = 0
	}
	return &Area{K: k, Region: r, Mem: r.Mem, Words: w}, nil
}

// Free releases the area.
func (a *Area) Free() error { return a.K.Memory().Free(a.Region) }

// Words8 views a snapshot's memory as records.
func Words8(b []byte) []uint64 { return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8) }

// Sum is the OLAP scan: the sum of all records.
func Sum(w []uint64) uint64 {
	var s0, s1, s2, s3 uint64
	i := 0
	for ; i+4 <= len(w); i += 4 {
		s0 += w[i]
		s1 += w[i+1]
		s2 += w[i+2]
		s3 += w[i+3]
	}
	for ; i < len(w); i++ {
		s0 += w[i]
	}
	return s0 + s1 + s2 + s3
}

// CheckOptions configure Check.
type CheckOptions struct {
	Writers    int
	Iterations int
	Log        func(format string, args ...any)
}

// Check runs Writers goroutines writing tagged values (writer<<48 | seq)
// to records of their own (record r belongs to writer r%Writers), and
// takes Iterations rounds of: snapshot A, start scanning it, snapshot B
// while A is being scanned, scan B, release both (and release A again,
// which must fail). A scan checks that for each writer the view holds
// exactly the writer's first S writes, S being the largest sequence
// number of that writer in the view: a consistent cut. Writers also check
// that every record they overwrite holds what they last wrote there (a
// write lost or a stale translation shows up), and at the end the live
// area must hold every write.
func Check(a *Area, o CheckOptions) error {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	nw := o.Writers
	const histCap = 1 << 23
	type writer struct {
		hist []uint32 // record of write seq (index seq-1)
		n    atomic.Uint64
		err  error
	}
	ws := make([]*writer, nw)
	var stop atomic.Bool
	var wg sync.WaitGroup
	words := a.Words
	perW := len(words) / nw
	for w := range ws {
		ws[w] = &writer{hist: make([]uint32, histCap)}
		wg.Add(1)
		go func(w int, x *writer) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			last := make([]uint64, perW)
			for seq := uint64(1); seq <= histCap && !stop.Load(); seq++ {
				k := rng.IntN(perW)
				r := k*nw + w
				want := uint64(0)
				if last[k] != 0 {
					want = uint64(w)<<48 | last[k]
				}
				if got := atomic.LoadUint64(&words[r]); got != want {
					x.err = fmt.Errorf("writer %d: record %d holds %#x, last written %#x (lost write or stale translation)", w, r, got, want)
					return
				}
				atomic.StoreUint32(&x.hist[seq-1], uint32(k))
				x.n.Store(seq)
				atomic.StoreUint64(&words[r], uint64(w)<<48|seq)
				last[k] = seq
				if seq%64 == 0 {
					runtime.Gosched()
				}
			}
		}(w, ws[w])
	}
	verify := func(view []uint64, name string) error {
		for w, x := range ws {
			var s uint64
			for k := 0; k < perW; k++ {
				v := view[k*nw+w]
				if v != 0 && v>>48 != uint64(w) {
					return fmt.Errorf("%s: record %d holds %#x, not writer %d's", name, k*nw+w, v, w)
				}
				s = max(s, v&(1<<48-1))
			}
			for x.n.Load() < s {
				runtime.Gosched()
			}
			exp := make([]uint64, perW)
			for seq := uint64(1); seq <= s; seq++ {
				exp[atomic.LoadUint32(&x.hist[seq-1])] = seq
			}
			for k := 0; k < perW; k++ {
				want := uint64(0)
				if exp[k] != 0 {
					want = uint64(w)<<48 | exp[k]
				}
				if got := view[k*nw+w]; got != want {
					return fmt.Errorf("%s: record %d = %#x, want %#x (writer %d cut at seq %d): not the state of one instant", name, k*nw+w, got, want, w, s)
				}
			}
		}
		return nil
	}
	var firstErr error
	for it := 0; it < o.Iterations && firstErr == nil; it++ {
		sa, err := kapi.Snapshot(a.K, a.Mem)
		if err != nil {
			firstErr = err
			break
		}
		errA := make(chan error, 1)
		go func() { errA <- verify(Words8(sa.Mem), "snapshot A") }()
		runtime.Gosched()
		sb, err := kapi.Snapshot(a.K, a.Mem)
		if err != nil {
			firstErr = err
			<-errA
			break
		}
		if err := verify(Words8(sb.Mem), "snapshot B (taken while A was scanned)"); err != nil {
			firstErr = err
		}
		if err := <-errA; err != nil && firstErr == nil {
			firstErr = err
		}
		if err := kapi.ReleaseSnapshot(a.K, sa); err != nil && firstErr == nil {
			firstErr = err
		}
		if err := kapi.ReleaseSnapshot(a.K, sa); err == nil && firstErr == nil {
			firstErr = fmt.Errorf("releasing a snapshot twice succeeded")
		}
		if err := kapi.ReleaseSnapshot(a.K, sb); err != nil && firstErr == nil {
			firstErr = err
		}
		o.Log("iteration %d: ok (%s)", it, sa.Method)
	}
	stop.Store(true)
	wg.Wait()
	for _, x := range ws {
		if x.err != nil && firstErr == nil {
			firstErr = x.err
		}
	}
	if firstErr == nil {
		firstErr = verify(words, "live area at the end")
	}
	return firstErr
}
