package virtio_test

import (
	"errors"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio/virtiotest"
)

const testID = 42

func newDev(t *testing.T, features uint64, queueMax int) (*virtiotest.Device, *virtio.SimMem) {
	t.Helper()
	mem := virtio.NewSimMem(0x1_0000_0000, 4<<20)
	return virtiotest.New(mem, testID, features, nil, 2, queueMax), mem
}

func TestNegotiation(t *testing.T) {
	fd, _ := newDev(t, virtio.FEventIdx|1<<3|1<<7, 64)
	d, err := virtio.Open(fd, fd.IRQ, testID, virtio.FEventIdx|1<<3|1<<9)
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(virtio.FVersion1 | virtio.FEventIdx | 1<<3)
	if d.Features() != want || fd.DriverFeatures() != want {
		t.Fatalf("features %#x, device saw %#x, want %#x", d.Features(), fd.DriverFeatures(), want)
	}
	if s := fd.Status(); s != virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK {
		t.Fatalf("status after Open %#x", s)
	}
	if fd.Resets() != 1 {
		t.Fatalf("Open did not reset the device first")
	}
	if err := d.Ready(); err != nil {
		t.Fatal(err)
	}
	if s := fd.Status(); s&virtio.StatusDriverOK == 0 {
		t.Fatalf("status after Ready %#x", s)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if fd.Status() != 0 {
		t.Fatalf("Close did not reset")
	}
}

func TestOpenRefusals(t *testing.T) {
	fd, _ := newDev(t, 0, 64)
	if _, err := virtio.Open(fd, nil, testID+1, 0); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("wrong device id: %v", err)
	}
	fd.Version = 1
	if _, err := virtio.Open(fd, nil, testID, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("legacy device: %v", err)
	}
	fd.Version = 2
	fd.Features = 0 // no VERSION_1
	if _, err := virtio.Open(fd, nil, testID, 0); !errors.Is(err, virtio.ErrDevice) {
		t.Fatalf("no VERSION_1: %v", err)
	}
	if fd.Status()&virtio.StatusFailed == 0 {
		t.Fatalf("driver did not set FAILED")
	}
}

func openQueue(t *testing.T, fd *virtiotest.Device, mem *virtio.SimMem, want uint64, size int) (*virtio.Device, *virtio.Queue) {
	t.Helper()
	d, err := virtio.Open(fd, fd.IRQ, testID, want)
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewQueue(d, 0, size, mem)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ready(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, q
}

// Chains come back out of order, the ring and the 16-bit indices wrap many
// times, and descriptors are reused correctly.
func TestQueueWrapOutOfOrder(t *testing.T) {
	for _, ev := range []bool{false, true} {
		fd, mem := newDev(t, virtio.FEventIdx, 8)
		var want uint64
		if ev {
			want = virtio.FEventIdx
		}
		_, q := openQueue(t, fd, mem, want, 0)
		if q.Size() != 8 {
			t.Fatalf("size %d, want the device's max 8", q.Size())
		}
		buf, _ := mem.Alloc(4096)
		dq := fd.Queue(0)
		rng := rand.New(rand.NewPCG(1, 2))
		next, done := uint64(0), uint64(0)
		var held []virtiotest.Chain
		seen := map[uint64]bool{}
		out := make([]virtio.Used, 8)
		for done < 70000 {
			// Add chains of 1–3 buffers until full.
			for {
				n := 1 + rng.IntN(3)
				bufs := make([]virtio.Buffer, n)
				for i := range bufs {
					bufs[i] = virtio.Buffer{Addr: buf.Phys + uint64(i)*8, Len: 8, DeviceWrites: i == n-1}
				}
				if err := q.Add(bufs, next); err != nil {
					if !errors.Is(err, virtio.ErrQueueFull) {
						t.Fatal(err)
					}
					break
				}
				next++
			}
			q.Kick()
			for {
				c, ok := dq.Pop()
				if !ok {
					break
				}
				if !c.Segs[len(c.Segs)-1].Writes {
					t.Fatal("last buffer not device-writable")
				}
				held = append(held, c)
			}
			rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			k := 1 + rng.IntN(len(held))
			for _, c := range held[:k] {
				dq.Push(c.Head, uint32(len(c.Segs)))
			}
			held = held[k:]
			dq.Signal()
			for q.Pending() {
				n, err := q.Reap(out)
				if err != nil {
					t.Fatal(err)
				}
				for _, u := range out[:n] {
					if seen[u.Token] {
						t.Fatalf("token %d completed twice", u.Token)
					}
					seen[u.Token] = true
					done++
				}
			}
		}
		if q.NumFree()+countDescs(held) != 8 {
			t.Fatalf("descriptor leak: %d free, %d held", q.NumFree(), countDescs(held))
		}
		if fd.Interrupts.Load() != 0 {
			t.Fatalf("event idx %v: %d interrupts while polling", ev, fd.Interrupts.Load())
		}
	}
}

func countDescs(cs []virtiotest.Chain) int {
	n := 0
	for _, c := range cs {
		n += len(c.Segs)
	}
	return n
}

// A device that asks not to be notified gets no notifications; one that
// wants them gets one per batch.
func TestNotificationSuppression(t *testing.T) {
	for _, tc := range []struct {
		name     string
		want     uint64
		noNotify bool
		notifies uint64
	}{
		{"flags-notify", 0, false, 10},
		{"flags-no-notify", 0, true, 0},
		{"event-idx-notify", virtio.FEventIdx, false, 10},
		{"event-idx-stale", virtio.FEventIdx, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, mem := newDev(t, virtio.FEventIdx, 64)
			fd.NoNotify = tc.noNotify
			_, q := openQueue(t, fd, mem, tc.want, 64)
			buf, _ := mem.Alloc(4096)
			out := make([]virtio.Used, 64)
			for batch := 0; batch < 10; batch++ {
				for i := 0; i < 5; i++ {
					if err := q.Add([]virtio.Buffer{{Addr: buf.Phys, Len: 16}}, uint64(i)); err != nil {
						t.Fatal(err)
					}
				}
				q.Kick()
				q.Kick() // nothing new: no second notification
				for {
					c, ok := fd.Queue(0).Pop()
					if !ok {
						break
					}
					fd.Queue(0).Push(c.Head, 0)
				}
				fd.Queue(0).Signal()
				if n, err := q.Reap(out); err != nil || n != 5 {
					t.Fatalf("reaped %d, %v", n, err)
				}
			}
			if got := fd.Notifies.Load(); got != tc.notifies {
				t.Fatalf("%d notifications, want %d", got, tc.notifies)
			}
			st := q.Stats()
			if st.Notifies+st.Suppressed != 10 || st.Completed != 50 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// Wait sleeps on the interrupt and is woken by a completion; interrupts
// are off again afterwards.
func TestWaitInterrupt(t *testing.T) {
	for _, want := range []uint64{0, virtio.FEventIdx} {
		fd, mem := newDev(t, virtio.FEventIdx, 16)
		d, q := openQueue(t, fd, mem, want, 16)
		// Our monitor needs no InterruptACK; models that hold the
		// interrupt until acknowledged get one per wake-up.
		d.AckWakeups = want != 0
		wantAcks := int64(0)
		if d.AckWakeups {
			wantAcks = 1
		}
		q.SpinTime = 0
		buf, _ := mem.Alloc(4096)
		if q.Wait(5 * time.Millisecond) {
			t.Fatal("Wait on an idle queue returned true")
		}
		if err := q.Add([]virtio.Buffer{{Addr: buf.Phys, Len: 16}}, 7); err != nil {
			t.Fatal(err)
		}
		q.Kick()
		go func() {
			time.Sleep(20 * time.Millisecond)
			c, ok := fd.Queue(0).Pop()
			if !ok {
				panic("nothing available")
			}
			fd.Queue(0).Push(c.Head, 3)
			fd.Queue(0).Signal()
		}()
		start := time.Now()
		if !q.Wait(5 * time.Second) {
			t.Fatal("Wait timed out")
		}
		if time.Since(start) > 2*time.Second {
			t.Fatal("Wait was not woken by the interrupt")
		}
		if fd.Interrupts.Load() != 1 || q.Stats().Wakeups != 1 || int64(fd.Acks.Load()) != wantAcks {
			t.Fatalf("interrupts %d, stats %+v, acks %d", fd.Interrupts.Load(), q.Stats(), fd.Acks.Load())
		}
		out := make([]virtio.Used, 4)
		if n, _ := q.Reap(out); n != 1 || out[0] != (virtio.Used{Token: 7, Len: 3}) {
			t.Fatalf("reaped %d %+v", n, out[0])
		}
		// Interrupts are suppressed again: a polled completion raises none.
		q.Add([]virtio.Buffer{{Addr: buf.Phys, Len: 16}}, 8)
		q.Kick()
		c, _ := fd.Queue(0).Pop()
		fd.Queue(0).Push(c.Head, 0)
		fd.Queue(0).Signal()
		if fd.Interrupts.Load() != 1 {
			t.Fatalf("interrupt raised while polling (event idx %v)", want != 0)
		}
	}
}

// A device returning a descriptor that is not in flight breaks the queue.
func TestBadUsedEntry(t *testing.T) {
	fd, mem := newDev(t, 0, 8)
	_, q := openQueue(t, fd, mem, 0, 8)
	buf, _ := mem.Alloc(4096)
	q.Add([]virtio.Buffer{{Addr: buf.Phys, Len: 16}}, 1)
	q.Kick()
	c, _ := fd.Queue(0).Pop()
	fd.Queue(0).Push(c.Head+3, 0)
	out := make([]virtio.Used, 4)
	if _, err := q.Reap(out); !errors.Is(err, virtio.ErrDevice) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Reap: %v", err)
	}
	if err := q.Add([]virtio.Buffer{{Addr: buf.Phys, Len: 16}}, 2); !errors.Is(err, virtio.ErrDevice) {
		t.Fatalf("Add on a broken queue: %v", err)
	}
}

// Many goroutines add, kick, wait and reap while the device serves from
// its own goroutine (run with -race).
func TestConcurrent(t *testing.T) {
	for _, noNotify := range []bool{false, true} {
		fd, mem := newDev(t, virtio.FEventIdx, 32)
		fd.NoNotify = noNotify
		_, q := openQueue(t, fd, mem, virtio.FEventIdx, 32)
		stop := make(chan struct{})
		var served sync.WaitGroup
		served.Add(1)
		go func() {
			defer served.Done()
			fd.Queue(0).Serve(stop, func(c virtiotest.Chain) uint32 {
				copy(c.Segs[1].Data, c.Segs[0].Data)
				return uint32(len(c.Segs[1].Data))
			})
		}()
		buf, _ := mem.Alloc(64 << 10)
		const workers, per = 8, 2000
		var mu sync.Mutex
		got := map[uint64]int{}
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := make([]virtio.Used, 8)
				for i := 0; i < per; i++ {
					tok := uint64(w*per + i)
					slot := buf.Phys + uint64(w)*8192 + uint64(i%8)*1024
					for {
						err := q.Add([]virtio.Buffer{{Addr: slot, Len: 512}, {Addr: slot + 512, Len: 512, DeviceWrites: true}}, tok)
						if err == nil {
							break
						}
						if !errors.Is(err, virtio.ErrQueueFull) {
							panic(err)
						}
						q.Kick()
						q.Wait(time.Second)
						n, err := q.Reap(out)
						if err != nil {
							panic(err)
						}
						mu.Lock()
						for _, u := range out[:n] {
							got[u.Token]++
						}
						mu.Unlock()
					}
					q.Kick()
				}
			}()
		}
		wg.Wait()
		out := make([]virtio.Used, 32)
		deadline := time.Now().Add(10 * time.Second)
		for len(got) < workers*per && time.Now().Before(deadline) {
			q.Wait(100 * time.Millisecond)
			n, err := q.Reap(out)
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range out[:n] {
				got[u.Token]++
			}
		}
		close(stop)
		served.Wait()
		if len(got) != workers*per {
			t.Fatalf("noNotify %v: %d of %d completions", noNotify, len(got), workers*per)
		}
		for tok, n := range got {
			if n != 1 {
				t.Fatalf("token %d completed %d times", tok, n)
			}
		}
		if q.NumFree() != 32 {
			t.Fatalf("%d descriptors free after all completed", q.NumFree())
		}
	}
}

func TestSimMem(t *testing.T) {
	m := virtio.NewSimMem(0x10000, 64<<10)
	a, _ := m.Alloc(4096)
	b, _ := m.Alloc(8192)
	if a.Phys != 0x10000 || b.Phys != 0x11000 || len(b.Buf) != 8192 {
		t.Fatalf("regions %#x %#x", a.Phys, b.Phys)
	}
	if p, ok := m.Phys(b.Buf[100:200]); !ok || p != b.Phys+100 {
		t.Fatalf("Phys %#x %v", p, ok)
	}
	if _, ok := m.Phys(make([]byte, 10)); ok {
		t.Fatal("Phys of heap memory")
	}
	if err := m.Free(a); err != nil {
		t.Fatal(err)
	}
	if err := m.Free(a); err == nil {
		t.Fatal("double free accepted")
	}
	m.Free(b)
	c, err := m.Alloc(64 << 10)
	if err != nil || c.Phys != 0x10000 {
		t.Fatalf("coalescing: %v %#x", err, c.Phys)
	}
}
