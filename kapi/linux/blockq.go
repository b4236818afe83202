//go:build linux

package linux

import (
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/kapi"
)

// Block queues on Linux (kapi.BlockQueue). A process has no device queue
// it can poll (io_uring aside, which this pure-Go, no-cgo build does not
// use), so this is the honest substitute: a file opened like OpenBlock
// (O_DIRECT where the file system allows it) and a pool of worker
// goroutines, each blocked in pread/pwrite/fdatasync on its own thread
// (the Go runtime parks one OS thread per blocking system call). Submit
// hands requests to the workers through a channel; completions are
// collected in a list that Poll drains and Wait sleeps on.
//
// Invariants: at most depth requests are in flight (queued or running);
// a completion is delivered exactly once; after Close no worker runs.

const (
	queueDepth   = 64
	queueWorkers = 32
	maxTransfer  = 8 << 20
)

// OpenBlockQueue implements kapi.BlockQueueOpener.
func (k Kernel) OpenBlockQueue(path string, opts kapi.BlockOptions) (kapi.BlockQueue, error) {
	dev, err := k.OpenBlock(path, opts)
	if err != nil {
		return nil, err
	}
	q := &fileQueue{d: dev.(*device), reqs: make(chan kapi.BlockRequest, queueDepth), notify: make(chan struct{})}
	q.wg.Add(queueWorkers)
	for i := 0; i < queueWorkers; i++ {
		go q.worker()
	}
	return q, nil
}

type fileQueue struct {
	d    *device
	reqs chan kapi.BlockRequest
	wg   sync.WaitGroup

	mu       sync.Mutex
	inflight int
	done     []kapi.BlockCompletion
	notify   chan struct{} // closed (and replaced) when completions arrive
	closed   bool
}

func (q *fileQueue) Name() string          { return q.d.path }
func (q *fileQueue) BlockSize() int        { return blockSize }
func (q *fileQueue) Depth() int            { return queueDepth }
func (q *fileQueue) MaxTransfer() int      { return maxTransfer }
func (q *fileQueue) Size() int64           { return q.d.Size() }
func (q *fileQueue) Grow(size int64) error { return q.d.Grow(size) }

// Direct reports whether the file bypasses the page cache.
func (q *fileQueue) Direct() bool { return q.d.direct }

// AllocBuffer implements kapi.BlockQueue: page-aligned Go memory (what
// O_DIRECT needs; the Go heap does not move objects).
func (q *fileQueue) AllocBuffer(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("kapi/linux: %s: buffer of %d bytes: %w", q.d.path, n, syscall.EINVAL)
	}
	return kapi.AlignedBuffer((n+4095)&^4095, 4096), nil
}

// FreeBuffer implements kapi.BlockQueue (the garbage collector frees).
func (q *fileQueue) FreeBuffer([]byte) error { return nil }

func (q *fileQueue) check(r *kapi.BlockRequest) error {
	switch r.Op {
	case kapi.BlockFlush:
		return nil
	case kapi.BlockRead, kapi.BlockWrite:
	default:
		return fmt.Errorf("kapi/linux: %s: %v: %w", q.d.path, r.Op, syscall.EINVAL)
	}
	if r.Off < 0 || r.Off%blockSize != 0 || len(r.Buf) == 0 || len(r.Buf)%blockSize != 0 || len(r.Buf) > maxTransfer || !kapi.Aligned(r.Buf, blockSize) {
		return fmt.Errorf("kapi/linux: %s: %v of %d bytes at %d: not whole aligned %d-byte blocks (or over %d bytes): %w",
			q.d.path, r.Op, len(r.Buf), r.Off, blockSize, maxTransfer, syscall.EINVAL)
	}
	return nil
}

// Submit implements kapi.BlockQueue.
func (q *fileQueue) Submit(reqs []kapi.BlockRequest) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, fmt.Errorf("kapi/linux: %s: submit: %w", q.d.path, syscall.EBADF)
	}
	n := 0
	for n < len(reqs) && q.inflight < queueDepth {
		if err := q.check(&reqs[n]); err != nil {
			return n, err
		}
		q.inflight++
		q.reqs <- reqs[n] // never blocks: the channel holds queueDepth
		n++
	}
	return n, nil
}

func (q *fileQueue) worker() {
	defer q.wg.Done()
	for r := range q.reqs {
		c := kapi.BlockCompletion{Tag: r.Tag}
		switch r.Op {
		case kapi.BlockRead:
			n, err := q.d.f.ReadAt(r.Buf, r.Off)
			c.N = n
			if err != nil && err != io.EOF {
				c.Err = fmt.Errorf("kapi/linux: %s: read at %d: %w", q.d.path, r.Off, err)
			}
		case kapi.BlockWrite:
			n, err := q.d.f.WriteAt(r.Buf, r.Off)
			c.N = n
			if err != nil {
				c.Err = fmt.Errorf("kapi/linux: %s: write at %d: %w", q.d.path, r.Off, err)
			}
		case kapi.BlockFlush:
			c.Err = q.d.Flush()
		}
		q.mu.Lock()
		q.inflight--
		q.done = append(q.done, c)
		close(q.notify)
		q.notify = make(chan struct{})
		q.mu.Unlock()
	}
}

// Poll implements kapi.BlockQueue.
func (q *fileQueue) Poll(out []kapi.BlockCompletion) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.take(out)
}

func (q *fileQueue) take(out []kapi.BlockCompletion) int {
	n := copy(out, q.done)
	q.done = q.done[:copy(q.done, q.done[n:])]
	return n
}

// Wait implements kapi.BlockQueue.
func (q *fileQueue) Wait(out []kapi.BlockCompletion, timeout time.Duration) int {
	var timer <-chan time.Time
	if timeout >= 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	for {
		q.mu.Lock()
		if n := q.take(out); n > 0 || q.closed {
			q.mu.Unlock()
			return n
		}
		ch := q.notify
		q.mu.Unlock()
		select {
		case <-ch:
		case <-timer:
			return q.Poll(out)
		}
	}
}

// Close implements kapi.BlockQueue: requests already submitted finish
// (their completions are dropped), then the file is closed.
func (q *fileQueue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.reqs)
	close(q.notify) // wake waiters
	q.notify = make(chan struct{})
	q.mu.Unlock()
	q.wg.Wait()
	return q.d.Close()
}
