package blk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio/blk"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio/virtiotest"
)

// fakeDisk is a virtio-blk device model over a byte slice.
type fakeDisk struct {
	*virtiotest.Device
	mu      sync.Mutex
	disk    []byte
	ioErr   map[uint64]bool // sectors that fail with IOERR
	unsupp  map[uint64]bool // sectors that answer UNSUPP
	flushes int
	ops     int
}

func newFakeDisk(t *testing.T, mem *virtio.SimMem, size int, features uint64, queueMax int) *fakeDisk {
	cfg := make([]byte, 64)
	binary.LittleEndian.PutUint64(cfg[0:], uint64(size/512))
	binary.LittleEndian.PutUint32(cfg[8:], 64<<10) // size_max
	binary.LittleEndian.PutUint32(cfg[12:], 8)     // seg_max
	binary.LittleEndian.PutUint32(cfg[20:], 4096)  // blk_size
	f := &fakeDisk{Device: virtiotest.New(mem, blk.DeviceID, features, cfg, 1, queueMax),
		disk: make([]byte, size), ioErr: map[uint64]bool{}, unsupp: map[uint64]bool{}}
	return f
}

// handle serves one request chain and returns the bytes written.
func (f *fakeDisk) handle(c virtiotest.Chain) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops++
	hdr := c.Segs[0].Data
	typ := binary.LittleEndian.Uint32(hdr)
	sector := binary.LittleEndian.Uint64(hdr[8:])
	status := c.Segs[len(c.Segs)-1].Data
	data := c.Segs[1 : len(c.Segs)-1]
	off := int(sector * 512)
	switch {
	case f.ioErr[sector]:
		status[0] = 1
		return 1
	case f.unsupp[sector]:
		status[0] = 2
		return 1
	}
	var n uint32
	switch typ {
	case 0: // IN
		for _, s := range data {
			if !s.Writes {
				panic("read into a device-readable buffer")
			}
			copy(s.Data, f.disk[off:])
			off += len(s.Data)
			n += uint32(len(s.Data))
		}
	case 1: // OUT
		for _, s := range data {
			if s.Writes {
				panic("write from a device-writable buffer")
			}
			copy(f.disk[off:], s.Data)
			off += len(s.Data)
		}
	case 4:
		f.flushes++
	default:
		status[0] = 2
		return 1
	}
	status[0] = 0
	return n + 1
}

func open(t *testing.T, features uint64, queueMax int, async bool) (*fakeDisk, *blk.Device, *virtio.SimMem) {
	t.Helper()
	mem := virtio.NewSimMem(0x8000_0000, 16<<20)
	f := newFakeDisk(t, mem, 4<<20, features, queueMax)
	if async {
		f.NoNotify = true
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Wait for the queue, then serve it from this goroutine.
			for !f.Queue(0).Ready() {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
			f.Queue(0).Serve(stop, f.handle)
		}()
		t.Cleanup(func() { close(stop); <-done })
	} else {
		f.OnNotify = func(q *virtiotest.Queue) {
			for {
				c, ok := q.Pop()
				if !ok {
					break
				}
				q.Push(c.Head, f.handle(c))
			}
			q.Signal()
		}
	}
	d, err := blk.Open(f, f.IRQ, mem, blk.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return f, d, mem
}

// waitAll collects n completions.
func waitAll(t *testing.T, d *blk.Device, n int) map[uint64]error {
	t.Helper()
	got := map[uint64]error{}
	out := make([]blk.Completion, 16)
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d completions", len(got), n)
		}
		d.Wait(time.Second)
		k, err := d.Poll(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range out[:k] {
			if _, dup := got[c.Tag]; dup {
				t.Fatalf("tag %d completed twice", c.Tag)
			}
			got[c.Tag] = c.Err
		}
	}
	return got
}

func TestConfig(t *testing.T) {
	f, d, _ := open(t, blk.FFlush|blk.FBlkSize|blk.FSegMax|blk.FSizeMax|virtio.FEventIdx, 128, false)
	if d.Capacity() != 4<<20 || d.BlockSize() != 4096 || d.ReadOnly() || !d.CanFlush() || d.MaxSegments() != 8 || d.MaxSegmentSize() != 64<<10 {
		t.Fatalf("capacity %d bs %d ro %v flush %v segs %d", d.Capacity(), d.BlockSize(), d.ReadOnly(), d.CanFlush(), d.MaxSegments())
	}
	if f.Status()&virtio.StatusDriverOK == 0 {
		t.Fatal("not DRIVER_OK")
	}
	if d.Features()&virtio.FEventIdx == 0 {
		t.Fatal("EVENT_IDX not negotiated")
	}
}

// Many requests in flight, written then read back through scattered
// segments, with the ring wrapping many times.
func TestReadWriteMany(t *testing.T) {
	for _, async := range []bool{false, true} {
		f, d, mem := open(t, blk.FFlush|blk.FBlkSize|blk.FSegMax|blk.FSizeMax, 64, async)
		rng := rand.New(rand.NewPCG(3, 4))
		const nreq = 600
		bufs := make([]virtio.Region, nreq)
		want := map[uint64][]byte{} // block → contents
		reqs := make([]blk.Request, 0, nreq)
		for i := range bufs {
			bufs[i], _ = mem.Alloc(8192)
			blkno := uint64(rng.IntN(1024 - 2))
			if _, dup := want[blkno]; dup {
				continue
			}
			if _, dup := want[blkno+1]; dup {
				continue
			}
			for j := range bufs[i].Buf {
				bufs[i].Buf[j] = byte(rng.Uint32())
			}
			want[blkno] = bufs[i].Buf[:4096]
			want[blkno+1] = bufs[i].Buf[4096:8192]
			// Two segments, second first in memory order reversed: the
			// device must follow the chain.
			reqs = append(reqs, blk.Request{Op: blk.Write, Sector: blkno * 8, Tag: uint64(len(reqs)),
				Segs: []blk.Segment{{Addr: bufs[i].Phys, Len: 4096}, {Addr: bufs[i].Phys + 4096, Len: 4096}}})
		}
		submitAll(t, d, reqs)
		// Read everything back into fresh buffers.
		var rreqs []blk.Request
		rb := map[uint64]virtio.Region{}
		for blkno := range want {
			r, _ := mem.Alloc(4096)
			rb[blkno] = r
			rreqs = append(rreqs, blk.Request{Op: blk.Read, Sector: blkno * 8, Tag: blkno, Segs: []blk.Segment{{Addr: r.Phys, Len: 4096}}})
		}
		submitAll(t, d, rreqs)
		for blkno, w := range want {
			if !bytes.Equal(rb[blkno].Buf[:4096], w) {
				t.Fatalf("async %v: block %d differs", async, blkno)
			}
			if !bytes.Equal(f.disk[blkno*4096:blkno*4096+4096], w) {
				t.Fatalf("async %v: disk block %d differs", async, blkno)
			}
			mem.Free(rb[blkno])
		}
		for _, b := range bufs {
			mem.Free(b)
		}
		st := d.QueueStats()
		if st.Completed != uint64(len(reqs)+len(rreqs)) {
			t.Fatalf("stats %+v", st)
		}
		t.Logf("async %v: %d requests, %d notifications, %d suppressed, %d sleeps", async, st.Completed, st.Notifies, st.Suppressed, st.Sleeps)
	}
}

// submitAll submits reqs in batches as the queue allows and waits for all.
func submitAll(t *testing.T, d *blk.Device, reqs []blk.Request) {
	t.Helper()
	done := 0
	out := make([]blk.Completion, 32)
	for i := 0; i < len(reqs) || done < len(reqs); {
		if i < len(reqs) {
			n, err := d.Submit(reqs[i:min(len(reqs), i+20)])
			if err != nil {
				t.Fatal(err)
			}
			i += n
		}
		if done < i {
			d.Wait(time.Second)
		}
		k, err := d.Poll(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range out[:k] {
			if c.Err != nil {
				t.Fatalf("tag %d: %v", c.Tag, c.Err)
			}
		}
		done += k
	}
}

func TestErrors(t *testing.T) {
	f, d, mem := open(t, blk.FBlkSize|blk.FSegMax|blk.FSizeMax, 64, false)
	buf, _ := mem.Alloc(4096)
	seg := []blk.Segment{{Addr: buf.Phys, Len: 4096}}
	f.ioErr[8] = true
	f.unsupp[16] = true
	n, err := d.Submit([]blk.Request{
		{Op: blk.Read, Sector: 8, Segs: seg, Tag: 1},
		{Op: blk.Write, Sector: 16, Segs: seg, Tag: 2},
		{Op: blk.Read, Sector: 0, Segs: seg, Tag: 3},
		{Op: blk.Flush, Tag: 4}, // no FLUSH feature: write-through, completes locally
	})
	if n != 4 || err != nil {
		t.Fatalf("submit %d %v", n, err)
	}
	got := waitAll(t, d, 4)
	if !errors.Is(got[1], syscall.EIO) || !errors.Is(got[2], syscall.EOPNOTSUPP) || got[3] != nil || got[4] != nil {
		t.Fatalf("completions %v", got)
	}
	if f.flushes != 0 {
		t.Fatal("flush sent to a device without VIRTIO_BLK_F_FLUSH")
	}
	// Invalid requests never reach the device; the batch stops there.
	bad := []struct {
		r    blk.Request
		want error
	}{
		{blk.Request{Op: blk.Read, Sector: (4 << 20) / 512, Segs: seg}, syscall.EINVAL},
		{blk.Request{Op: blk.Read, Sector: 1, Segs: seg}, syscall.EINVAL}, // not 4 KiB aligned
		{blk.Request{Op: blk.Read, Sector: 0, Segs: []blk.Segment{{Addr: buf.Phys, Len: 100}}}, syscall.EINVAL},
		{blk.Request{Op: blk.Read, Sector: 0, Segs: make([]blk.Segment, 9)}, syscall.EINVAL},
		{blk.Request{Op: blk.Flush, Segs: seg}, syscall.EINVAL},
	}
	for _, b := range bad {
		ops := f.ops
		n, err := d.Submit([]blk.Request{{Op: blk.Read, Sector: 0, Segs: seg, Tag: 9}, b.r})
		if n != 1 || !errors.Is(err, b.want) {
			t.Fatalf("%+v: n %d err %v", b.r, n, err)
		}
		waitAll(t, d, 1)
		if f.ops != ops+1 {
			t.Fatalf("invalid request reached the device")
		}
	}
}

func TestReadOnlyAndFlush(t *testing.T) {
	f, d, mem := open(t, blk.FRO|blk.FFlush, 64, false)
	buf, _ := mem.Alloc(4096)
	if !d.ReadOnly() {
		t.Fatal("RO not seen")
	}
	_, err := d.Submit([]blk.Request{{Op: blk.Write, Sector: 0, Segs: []blk.Segment{{Addr: buf.Phys, Len: 4096}}}})
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write to RO: %v", err)
	}
	if n, err := d.Submit([]blk.Request{{Op: blk.Flush, Tag: 5}}); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	if got := waitAll(t, d, 1); got[5] != nil || f.flushes != 1 {
		t.Fatalf("flush: %v, device saw %d", got, f.flushes)
	}
}

// Goroutines submit and wait concurrently against an asynchronous device
// (run with -race).
func TestConcurrentSubmitters(t *testing.T) {
	_, d, mem := open(t, blk.FFlush|blk.FBlkSize|blk.FSegMax|blk.FSizeMax|virtio.FEventIdx, 32, true)
	var mu sync.Mutex
	got := map[uint64]error{}
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		buf, _ := mem.Alloc(4096)
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]blk.Completion, 8)
			for i := 0; i < 300; i++ {
				tag := uint64(w*1000 + i)
				for {
					n, err := d.Submit([]blk.Request{{Op: blk.Op(1 + i%2), Sector: uint64(w * 8), Segs: []blk.Segment{{Addr: buf.Phys, Len: 4096}}, Tag: tag}})
					if err != nil {
						panic(err)
					}
					if n == 1 {
						break
					}
					d.Wait(100 * time.Millisecond)
				}
				d.Wait(100 * time.Millisecond)
				k, err := d.Poll(out)
				if err != nil {
					panic(err)
				}
				mu.Lock()
				for _, c := range out[:k] {
					got[c.Tag] = c.Err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	out := make([]blk.Completion, 8)
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 1800 && time.Now().Before(deadline) {
		d.Wait(100 * time.Millisecond)
		k, _ := d.Poll(out)
		for _, c := range out[:k] {
			got[c.Tag] = c.Err
		}
	}
	if len(got) != 1800 {
		t.Fatalf("%d of 1800 completions", len(got))
	}
	for tag, err := range got {
		if err != nil {
			t.Fatalf("tag %d: %v", tag, err)
		}
	}
}
