package kapi

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// NewQueueDevice returns a synchronous BlockDevice on top of q (the image
// serves OpenBlock of a disk this way). Callers' buffers may live anywhere
// (the Go heap included) and need no alignment: data is copied through
// bounce buffers from q.AllocBuffer; a write that does not cover whole
// blocks reads the partial edge blocks first (concurrent unaligned writes
// to the same block are not atomic with each other, as with kapi/linux).
//
// Concurrent callers share the queue: whoever finds nobody collecting
// completions collects them for everyone (routing them by Tag) until its
// own requests are done, then hands that job on. So no goroutine polls
// while nothing is in flight, and no completion waits for a wake-up
// hand-off while its submitter is already polling. Closing the device
// closes q.
func NewQueueDevice(q BlockQueue) BlockDevice {
	chunk := min(q.MaxTransfer(), 256<<10)
	chunk -= chunk % q.BlockSize()
	d := &queueDevice{q: q, chunk: chunk, waiters: map[uint64]*qwaiter{},
		out: make([]BlockCompletion, max(q.Depth(), 1))}
	d.cond.L = &d.mu
	return d
}

type queueDevice struct {
	q     BlockQueue
	chunk int

	mu      sync.Mutex
	cond    sync.Cond // broadcast when a collector hands off or delivered
	reaping bool      // someone is collecting completions
	waiters map[uint64]*qwaiter
	nextTag uint64
	pool    [][]byte // free bounce buffers of chunk bytes
	out     []BlockCompletion
	closed  bool
}

type qwaiter struct {
	remaining int
	n         int
	err       error
}

func (d *queueDevice) Name() string          { return d.q.Name() }
func (d *queueDevice) BlockSize() int        { return d.q.BlockSize() }
func (d *queueDevice) Size() int64           { return d.q.Size() }
func (d *queueDevice) Grow(size int64) error { return d.q.Grow(size) }

// do runs reqs (tags are assigned here) to completion and returns the
// bytes transferred and the first error.
func (d *queueDevice) do(reqs []BlockRequest) (int, error) {
	w := &qwaiter{remaining: len(reqs)}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, fmt.Errorf("kapi: %s: device closed", d.q.Name())
	}
	for i := range reqs {
		reqs[i].Tag = d.nextTag
		d.waiters[d.nextTag] = w
		d.nextTag++
	}
	sub := 0
	for {
		if sub < len(reqs) && w.err == nil {
			n, err := d.q.Submit(reqs[sub:])
			sub += n
			if err != nil {
				w.err = err
				for _, r := range reqs[sub:] {
					delete(d.waiters, r.Tag)
				}
				w.remaining -= len(reqs) - sub
				reqs = reqs[:sub]
			}
		}
		if w.remaining == 0 {
			return w.n, w.err
		}
		if d.reaping {
			d.cond.Wait()
			continue
		}
		d.reaping = true
		d.mu.Unlock()
		n := d.q.Wait(d.out, 100*time.Millisecond)
		d.mu.Lock()
		for _, c := range d.out[:n] {
			x, ok := d.waiters[c.Tag]
			if !ok {
				continue // not ours (someone polls the queue directly)
			}
			delete(d.waiters, c.Tag)
			x.n += c.N
			if c.Err != nil && x.err == nil {
				x.err = c.Err
			}
			x.remaining--
		}
		d.reaping = false
		d.cond.Broadcast()
	}
}

func (d *queueDevice) getBuf() ([]byte, error) {
	d.mu.Lock()
	if n := len(d.pool); n > 0 {
		b := d.pool[n-1]
		d.pool = d.pool[:n-1]
		d.mu.Unlock()
		return b, nil
	}
	d.mu.Unlock()
	b, err := d.q.AllocBuffer(d.chunk)
	if err != nil {
		return nil, fmt.Errorf("kapi: %s: bounce buffer: %w", d.q.Name(), err)
	}
	return b[:d.chunk], nil
}

func (d *queueDevice) putBufs(bufs [][]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range bufs {
		if len(d.pool) < 64 && !d.closed {
			d.pool = append(d.pool, b)
		} else {
			d.q.FreeBuffer(b)
		}
	}
}

// maxBatch bounds the bounce memory one call holds at a time.
const maxBatch = 32

// transfer moves [off, off+len(p)) between p and the device in aligned
// chunks of at most d.chunk bytes.
func (d *queueDevice) transfer(p []byte, off int64, write bool) (int, error) {
	bs := int64(d.q.BlockSize())
	done := 0
	for done < len(p) {
		var reqs []BlockRequest
		var bufs [][]byte
		var spans [][2]int // [from, to) of p each chunk covers
		pos := done
		for pos < len(p) && len(reqs) < maxBatch {
			cs := (off + int64(pos)) &^ (bs - 1)
			ce := min(cs+int64(d.chunk), (off+int64(len(p))+bs-1)&^(bs-1))
			buf, err := d.getBuf()
			if err != nil {
				d.putBufs(bufs)
				return done, err
			}
			skip := int(off + int64(pos) - cs)
			n := min(int(ce-cs)-skip, len(p)-pos)
			reqs = append(reqs, BlockRequest{Off: cs, Buf: buf[:ce-cs]})
			bufs = append(bufs, buf)
			spans = append(spans, [2]int{pos, pos + n})
			pos += n
		}
		if write {
			// Partial edge blocks: read the chunk first, then overlay.
			var pre []BlockRequest
			for i, r := range reqs {
				from, to := spans[i][0], spans[i][1]
				skip := int(off + int64(from) - r.Off)
				if skip != 0 || skip+(to-from) != len(r.Buf) {
					pre = append(pre, BlockRequest{Op: BlockRead, Off: r.Off, Buf: r.Buf})
				}
			}
			if len(pre) > 0 {
				if _, err := d.do(pre); err != nil {
					d.putBufs(bufs)
					return done, fmt.Errorf("kapi: %s: read before partial write at %d: %w", d.q.Name(), off, err)
				}
			}
			for i := range reqs {
				from, to := spans[i][0], spans[i][1]
				copy(reqs[i].Buf[off+int64(from)-reqs[i].Off:], p[from:to])
				reqs[i].Op = BlockWrite
			}
		} else {
			for i := range reqs {
				reqs[i].Op = BlockRead
			}
		}
		if _, err := d.do(reqs); err != nil {
			d.putBufs(bufs)
			op := "read"
			if write {
				op = "write"
			}
			return done, fmt.Errorf("kapi: %s: %s at %d: %w", d.q.Name(), op, off+int64(done), err)
		}
		if !write {
			for i, r := range reqs {
				from, to := spans[i][0], spans[i][1]
				copy(p[from:to], r.Buf[off+int64(from)-r.Off:])
			}
		}
		d.putBufs(bufs)
		done = pos
	}
	return done, nil
}

func (d *queueDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("kapi: %s: read at negative offset %d", d.q.Name(), off)
	}
	size := d.q.Size()
	if off >= size && len(p) > 0 {
		return 0, io.EOF
	}
	want := p
	if off+int64(len(p)) > size {
		want = p[:size-off]
	}
	n, err := d.transfer(want, off, false)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

func (d *queueDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("kapi: %s: write at negative offset %d", d.q.Name(), off)
	}
	return d.transfer(p, off, true)
}

func (d *queueDevice) Flush() error {
	if _, err := d.do([]BlockRequest{{Op: BlockFlush}}); err != nil {
		return fmt.Errorf("kapi: %s: flush: %w", d.q.Name(), err)
	}
	return nil
}

func (d *queueDevice) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	pool := d.pool
	d.pool = nil
	d.mu.Unlock()
	for _, b := range pool {
		d.q.FreeBuffer(b)
	}
	return d.q.Close()
}
