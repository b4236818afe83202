//go:build linux

package linux_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

func openQueue(t *testing.T, size int64) kapi.BlockQueue {
	t.Helper()
	q, err := kapi.OpenBlockQueue(linux.Kernel{}, filepath.Join(t.TempDir(), "disk"), kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.Grow(size); err != nil {
		t.Fatal(err)
	}
	return q
}

// collect waits for n completions and returns them by tag.
func collect(t *testing.T, q kapi.BlockQueue, n int) map[uint64]kapi.BlockCompletion {
	t.Helper()
	got := map[uint64]kapi.BlockCompletion{}
	out := make([]kapi.BlockCompletion, 16)
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d completions", len(got), n)
		}
		k := q.Wait(out, time.Second)
		for _, c := range out[:k] {
			if _, dup := got[c.Tag]; dup {
				t.Fatalf("tag %d completed twice", c.Tag)
			}
			got[c.Tag] = c
		}
	}
	return got
}

// Random 4 KiB writes with many in flight, a flush, then reads of every
// block written, checked against a model.
func TestBlockQueueManyInFlight(t *testing.T) {
	const blocks = 512
	q := openQueue(t, blocks*4096)
	if q.BlockSize() != 4096 || q.Depth() < 8 || q.Size() != blocks*4096 {
		t.Fatalf("bs %d depth %d size %d", q.BlockSize(), q.Depth(), q.Size())
	}
	rng := rand.New(rand.NewPCG(5, 6))
	model := map[int64][]byte{}
	bufs := map[uint64][]byte{}
	var reqs []kapi.BlockRequest
	for i := 0; i < 300; i++ {
		b := int64(rng.IntN(blocks))
		if _, ok := model[b]; ok {
			continue
		}
		buf, err := q.AllocBuffer(4096)
		if err != nil {
			t.Fatal(err)
		}
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		model[b] = buf
		reqs = append(reqs, kapi.BlockRequest{Op: kapi.BlockWrite, Off: b * 4096, Buf: buf, Tag: uint64(b)})
	}
	runAll(t, q, reqs)
	runAll(t, q, []kapi.BlockRequest{{Op: kapi.BlockFlush, Tag: 1 << 40}})
	reqs = reqs[:0]
	for b := range model {
		buf, _ := q.AllocBuffer(4096)
		bufs[uint64(b)] = buf
		reqs = append(reqs, kapi.BlockRequest{Op: kapi.BlockRead, Off: b * 4096, Buf: buf, Tag: uint64(b)})
	}
	got := runAll(t, q, reqs)
	for b, want := range model {
		if got[uint64(b)].N != 4096 || !bytes.Equal(bufs[uint64(b)], want) {
			t.Fatalf("block %d: n %d, contents differ", b, got[uint64(b)].N)
		}
	}
}

// runAll submits reqs as the queue accepts them and waits for all.
func runAll(t *testing.T, q kapi.BlockQueue, reqs []kapi.BlockRequest) map[uint64]kapi.BlockCompletion {
	t.Helper()
	got := map[uint64]kapi.BlockCompletion{}
	out := make([]kapi.BlockCompletion, 32)
	sub := 0
	for len(got) < len(reqs) {
		if sub < len(reqs) {
			n, err := q.Submit(reqs[sub:])
			if err != nil {
				t.Fatal(err)
			}
			if n > q.Depth() {
				t.Fatalf("accepted %d > depth %d", n, q.Depth())
			}
			sub += n
		}
		k := q.Wait(out, time.Second)
		for _, c := range out[:k] {
			if c.Err != nil {
				t.Fatalf("tag %d: %v", c.Tag, c.Err)
			}
			got[c.Tag] = c
		}
	}
	return got
}

func TestBlockQueueInvalid(t *testing.T) {
	q := openQueue(t, 1<<20)
	buf, _ := q.AllocBuffer(8192)
	ok := kapi.BlockRequest{Op: kapi.BlockRead, Off: 0, Buf: buf[:4096]}
	for _, bad := range []kapi.BlockRequest{
		{Op: kapi.BlockRead, Off: 100, Buf: buf[:4096]},
		{Op: kapi.BlockRead, Off: 0, Buf: buf[:100]},
		{Op: kapi.BlockRead, Off: 0, Buf: buf[1:4097]},
		{Op: 0, Off: 0, Buf: buf[:4096]},
	} {
		n, err := q.Submit([]kapi.BlockRequest{ok, bad})
		if n != 1 || !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("%+v: n %d err %v", bad.Op, n, err)
		}
		collect(t, q, 1)
	}
	// A read past the end of the file is short, not an error.
	q2 := openQueue(t, 4096)
	q2.Submit([]kapi.BlockRequest{{Op: kapi.BlockRead, Off: 0, Buf: buf, Tag: 3}})
	if c := collect(t, q2, 1)[3]; c.N != 4096 || c.Err != nil {
		t.Fatalf("read past end: %+v", c)
	}
	q2.Close()
	if _, err := q2.Submit([]kapi.BlockRequest{ok}); !errors.Is(err, syscall.EBADF) {
		t.Fatalf("submit after close: %v", err)
	}
	if n := q2.Wait(make([]kapi.BlockCompletion, 1), time.Second); n != 0 {
		t.Fatalf("wait after close: %d", n)
	}
}

// The queue accepts at most Depth requests; the rest go in as room frees.
func TestBlockQueueFull(t *testing.T) {
	q := openQueue(t, 1<<20)
	reqs := make([]kapi.BlockRequest, q.Depth()*3)
	for i := range reqs {
		buf, _ := q.AllocBuffer(4096)
		reqs[i] = kapi.BlockRequest{Op: kapi.BlockRead, Off: int64(i%256) * 4096, Buf: buf, Tag: uint64(i)}
	}
	n, err := q.Submit(reqs)
	if err != nil || n > q.Depth() || n == 0 {
		t.Fatalf("accepted %d of %d, %v", n, len(reqs), err)
	}
	got := collect(t, q, n)
	rest := runAll(t, q, reqs[n:])
	if len(got)+len(rest) != len(reqs) {
		t.Fatalf("%d+%d completions", len(got), len(rest))
	}
}

// The synchronous device on top of a queue: unaligned reads and writes
// from Go heap buffers, concurrent callers (run with -race), EOF.
func TestQueueDevice(t *testing.T) {
	q := openQueue(t, 2<<20)
	dev := kapi.NewQueueDevice(q)
	model := make([]byte, 2<<20)
	rng := rand.New(rand.NewPCG(7, 8))
	// Unaligned writes and reads, single caller, against a model.
	for i := 0; i < 200; i++ {
		off := rng.IntN(len(model) - 70000)
		n := 1 + rng.IntN(70000)
		if rng.IntN(2) == 0 {
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if w, err := dev.WriteAt(p, int64(off)); w != n || err != nil {
				t.Fatalf("write %d at %d: %d %v", n, off, w, err)
			}
			copy(model[off:], p)
		} else {
			p := make([]byte, n)
			if r, err := dev.ReadAt(p, int64(off)); r != n || err != nil {
				t.Fatalf("read %d at %d: %d %v", n, off, r, err)
			}
			if !bytes.Equal(p, model[off:off+n]) {
				t.Fatalf("read %d at %d differs", n, off)
			}
		}
	}
	if err := dev.Flush(); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8192)
	if n, err := dev.ReadAt(p, 2<<20-4096); n != 4096 || err != io.EOF {
		t.Fatalf("read across the end: %d %v", n, err)
	}
	// Concurrent aligned callers on disjoint ranges.
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := int64(w) * 128 << 10
			buf := make([]byte, 16<<10)
			for i := 0; i < 100; i++ {
				for j := range buf {
					buf[j] = byte(w + i + j)
				}
				off := base + int64(i%8)*16<<10
				if _, err := dev.WriteAt(buf, off); err != nil {
					panic(err)
				}
				got := make([]byte, len(buf))
				if _, err := dev.ReadAt(got, off); err != nil {
					panic(err)
				}
				if !bytes.Equal(got, buf) {
					panic("concurrent read-back differs")
				}
			}
		}()
	}
	wg.Wait()
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
}
