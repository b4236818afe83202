package virtio_test

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/virtiotest"
)

// echo is a one-queue test device: it copies the readable bytes of each
// chain into its writable bytes, and counts malformed chains.
type echo struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	bad     atomic.Int64
	started atomic.Int64
	config  [8]byte
}

func (e *echo) ID() uint32                          { return 42 }
func (e *echo) Features() uint64                    { return 1 << 3 }
func (e *echo) QueueMax() []uint16                  { return []uint16{64} }
func (e *echo) ReadConfig(off uint64, data []byte)  { virtio.ReadConfigBytes(e.config[:], off, data) }
func (e *echo) WriteConfig(off uint64, data []byte) {}
func (e *echo) Close() error                        { return nil }
func (e *echo) Start(f uint64, qs []*virtio.Queue) error {
	e.started.Add(1)
	q := qs[0]
	e.stop = make(chan struct{})
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		var c virtio.Chain
		buf := make([]byte, 1<<16)
		for q.Wait(e.stop) {
			for {
				ok, err := q.Next(&c)
				if !ok || err != nil {
					break
				}
				if c.Err != nil {
					e.bad.Add(1)
					q.Push(c.Head, 0)
					continue
				}
				n := c.Gather(buf[:c.ReadableLen()], 0)
				w := c.Scatter(0, buf[:n])
				q.Push(c.Head, uint32(w))
			}
			q.Flush()
		}
	}()
	return nil
}
func (e *echo) Stop() {
	if e.stop != nil {
		close(e.stop)
		e.wg.Wait()
		e.stop = nil
	}
}

type rig struct {
	mem  virtio.Memory
	dev  *echo
	t    *virtio.Transport
	drv  *virtiotest.Driver
	irqs atomic.Int64
}

func newRig(t *testing.T) *rig {
	r := &rig{mem: virtio.NewMemory(make([]byte, 1<<20)), dev: &echo{}}
	binary.LittleEndian.PutUint64(r.dev.config[:], 0x1122334455667788)
	r.t = virtio.NewTransport(r.dev, r.mem, func() { r.irqs.Add(1) }, nil)
	r.drv = virtiotest.New(r.t, r.mem, 0x1000)
	t.Cleanup(func() { r.t.Close() })
	return r
}

func TestRegisters(t *testing.T) {
	r := newRig(t)
	d := r.drv
	if d.Read(virtio.RegMagicValue) != 0x74726976 || d.Read(virtio.RegVersion) != 2 || d.Read(virtio.RegDeviceID) != 42 {
		t.Fatal("identification registers")
	}
	d.Write(virtio.RegDeviceFeaturesSel, 1)
	if d.Read(virtio.RegDeviceFeatures)&1 == 0 {
		t.Fatal("VIRTIO_F_VERSION_1 not offered")
	}
	d.Write(virtio.RegDeviceFeaturesSel, 0)
	if f := d.Read(virtio.RegDeviceFeatures); f&(1<<3) == 0 || f&(1<<29) == 0 {
		t.Fatalf("features low word %#x", f)
	}
	if d.Read(virtio.RegConfig) != 0x55667788 || d.Read(virtio.RegConfig+4) != 0x11223344 {
		t.Fatal("config space")
	}
	var b [1]byte
	r.t.MMIORead(virtio.RegConfig+7, b[:])
	if b[0] != 0x11 {
		t.Fatal("byte read of config space")
	}
	// Narrow register accesses read as zero and do not crash.
	var h [2]byte
	r.t.MMIORead(virtio.RegMagicValue, h[:])
	if h != [2]byte{} {
		t.Fatal("16-bit register read")
	}
	r.t.MMIOWrite(virtio.RegStatus, h[:])
	if d.Read(virtio.RegQueueNumMax) != 64 {
		t.Fatal("QueueNumMax")
	}
	d.Write(virtio.RegQueueSel, 5)
	if d.Read(virtio.RegQueueNumMax) != 0 {
		t.Fatal("QueueNumMax of a missing queue")
	}
}

func TestNegotiation(t *testing.T) {
	r := newRig(t)
	d := r.drv
	// Without VERSION_1 (a legacy driver) FEATURES_OK must not stick.
	if err := d.Init(1<<3, 0); err == nil {
		t.Fatal("device accepted a driver without VIRTIO_F_VERSION_1")
	}
	// A feature the device does not offer.
	d.Write(virtio.RegStatus, 0)
	d.Write(virtio.RegStatus, 3)
	d.Write(virtio.RegDriverFeaturesSel, 1)
	d.Write(virtio.RegDriverFeatures, 1|1<<5)
	d.Write(virtio.RegStatus, 3|virtio.StatusFeaturesOK)
	if d.Read(virtio.RegStatus)&virtio.StatusFeaturesOK != 0 {
		t.Fatal("device accepted a feature it does not offer")
	}
	// DRIVER_OK without FEATURES_OK does not start the device.
	d.Write(virtio.RegStatus, 3|virtio.StatusDriverOK)
	if r.dev.started.Load() != 0 {
		t.Fatal("device started without FEATURES_OK")
	}
	if err := d.Init(virtio.FVersion1|1<<3, 0); err != nil {
		t.Fatal(err)
	}
	if d.Features != virtio.FVersion1|1<<3 {
		t.Fatalf("features %#x", d.Features)
	}
	if r.dev.started.Load() != 1 {
		t.Fatal("device not started at DRIVER_OK")
	}
	// Reset stops it and clears the registers.
	d.Write(virtio.RegStatus, 0)
	if d.Read(virtio.RegStatus) != 0 || d.Read(virtio.RegQueueReady) != 0 || d.Read(virtio.RegQueueNum) != 0 {
		t.Fatal("registers after reset")
	}
}

func TestQueueRefused(t *testing.T) {
	r := newRig(t)
	d := r.drv
	d.Write(virtio.RegStatus, 0)
	d.Write(virtio.RegQueueSel, 0)
	for _, c := range []struct {
		num               uint32
		desc, avail, used uint64
	}{
		{0, 0x1000, 0x2000, 0x3000},      // size 0
		{3, 0x1000, 0x2000, 0x3000},      // not a power of 2
		{128, 0x1000, 0x2000, 0x3000},    // above QueueNumMax
		{64, 0x1008, 0x2000, 0x3000},     // misaligned table
		{64, 0x1000, 0x2001, 0x3000},     // misaligned avail
		{64, 0x1000, 0x2000, 0x3002},     // misaligned used
		{64, 1 << 40, 0x2000, 0x3000},    // outside memory
		{64, 0x1000, 0x2000, 1<<20 - 16}, // used ring crosses the end
	} {
		d.Write(virtio.RegQueueNum, c.num)
		d.Write(virtio.RegQueueDescLow, uint32(c.desc))
		d.Write(virtio.RegQueueDescHigh, uint32(c.desc>>32))
		d.Write(virtio.RegQueueDriverLow, uint32(c.avail))
		d.Write(virtio.RegQueueDeviceLow, uint32(c.used))
		d.Write(virtio.RegQueueReady, 1)
		if d.Read(virtio.RegQueueReady) != 0 {
			t.Fatalf("queue %+v accepted", c)
		}
	}
}

func roundTrips(t *testing.T, features uint64) {
	r := newRig(t)
	d := r.drv
	if err := d.Init(features, 0); err != nil {
		t.Fatal(err)
	}
	q := d.Q[0]
	in := d.Alloc(4096, 8)
	out := d.Alloc(4096, 8)
	for i := range 200 {
		src, _ := r.mem.Slice(in, 4096)
		for j := range src {
			src[j] = byte(i + j)
		}
		n := uint32(1 + i*13%4000)
		// Two readable segments, two writable ones.
		u, err := q.Submit(5*time.Second,
			virtiotest.Buf{Addr: in, Len: n / 2}, virtiotest.Buf{Addr: in + uint64(n/2), Len: n - n/2},
			virtiotest.Buf{Addr: out, Len: 10, Write: true}, virtiotest.Buf{Addr: out + 10, Len: 4086, Write: true})
		if err != nil {
			t.Fatal(err)
		}
		dst, _ := r.mem.Slice(out, uint64(n))
		if u.Len != n || !bytes.Equal(dst, src[:n]) {
			t.Fatalf("round trip %d: len %d, want %d", i, u.Len, n)
		}
	}
	// Many in flight at once, with interrupts off: a busy driver that
	// submits while the device polls needs few notifications.
	q.SetNoInterrupt(true)
	irqs := r.irqs.Load()
	kicks := q.Kicks
	for round := range 50 {
		old := q.AvailIdx()
		for range 8 {
			if _, err := q.Add(virtiotest.Buf{Addr: in, Len: 64}, virtiotest.Buf{Addr: out, Len: 64, Write: true}); err != nil {
				t.Fatal(err)
			}
		}
		q.KickIfNeeded(old)
		if _, err := q.Wait(8, 5*time.Second); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if features&virtio.FRingEventIdx == 0 && r.irqs.Load() != irqs {
		t.Errorf("%d interrupts with VRING_AVAIL_F_NO_INTERRUPT", r.irqs.Load()-irqs)
	}
	t.Logf("busy phase: %d notifications for 50 batches", q.Kicks-kicks)
	if st := r.t.Stats(); st.Notifies != uint64(q.Kicks) {
		t.Errorf("stats: %d notifications, driver made %d", st.Notifies, q.Kicks)
	}
}

func TestRoundTrips(t *testing.T)         { roundTrips(t, virtio.FVersion1) }
func TestRoundTripsEventIdx(t *testing.T) { roundTrips(t, virtio.FVersion1|virtio.FRingEventIdx) }

// With polling off and the device idle, a driver must be asked to notify
// (the flag is clear), and the notification must wake the device.
func TestNotifyWakes(t *testing.T) {
	for _, f := range []uint64{virtio.FVersion1, virtio.FVersion1 | virtio.FRingEventIdx} {
		r := newRig(t)
		r.t.SetPoll(-1)
		if err := r.drv.Init(f, 8); err != nil {
			t.Fatal(err)
		}
		q := r.drv.Q[0]
		buf := r.drv.Alloc(64, 8)
		for i := range 20 {
			time.Sleep(time.Millisecond) // let the device go to sleep
			old := q.AvailIdx()
			if _, err := q.Add(virtiotest.Buf{Addr: buf, Len: 8}, virtiotest.Buf{Addr: buf + 8, Len: 8, Write: true}); err != nil {
				t.Fatal(err)
			}
			if !q.NeedKick(old) {
				t.Fatalf("features %#x, request %d: idle device does not ask for a notification", f, i)
			}
			q.Kick()
			if _, err := q.Wait(1, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestInterruptSuppression(t *testing.T) {
	r := newRig(t)
	if err := r.drv.Init(virtio.FVersion1, 8); err != nil {
		t.Fatal(err)
	}
	q := r.drv.Q[0]
	buf := r.drv.Alloc(64, 8)
	if _, err := q.Submit(time.Second, virtiotest.Buf{Addr: buf, Len: 8}); err != nil {
		t.Fatal(err)
	}
	waitIRQ := func(want int64) {
		for end := time.Now().Add(time.Second); r.irqs.Load() < want && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
		if r.irqs.Load() != want {
			t.Fatalf("%d interrupts, want %d", r.irqs.Load(), want)
		}
	}
	waitIRQ(1)
	if r.drv.Read(virtio.RegInterruptStatus) != virtio.InterruptUsedBuffer {
		t.Fatal("InterruptStatus")
	}
	r.drv.Write(virtio.RegInterruptACK, virtio.InterruptUsedBuffer)
	if r.drv.Read(virtio.RegInterruptStatus) != 0 {
		t.Fatal("InterruptACK")
	}
	q.SetNoInterrupt(true)
	if _, err := q.Submit(time.Second, virtiotest.Buf{Addr: buf, Len: 8}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	waitIRQ(1)

	// EVENT_IDX: an interrupt only when used_event is crossed.
	r2 := newRig(t)
	if err := r2.drv.Init(virtio.FVersion1|virtio.FRingEventIdx, 8); err != nil {
		t.Fatal(err)
	}
	q = r2.drv.Q[0]
	q.SetUsedEvent(3) // interrupt when the 4th completion is published
	for i := range 4 {
		old := q.AvailIdx()
		q.Add(virtiotest.Buf{Addr: buf, Len: 8})
		q.KickIfNeeded(old)
		for end := time.Now().Add(time.Second); ; {
			idx, _ := r2.mem.Load16(q.Used + 2)
			if int(idx) == i+1 {
				break
			}
			if time.Now().After(end) {
				t.Fatal("no completion")
			}
			time.Sleep(100 * time.Microsecond)
		}
		want := int64(0)
		if i == 3 {
			want = 1
		}
		time.Sleep(2 * time.Millisecond)
		if r2.irqs.Load() != want {
			t.Fatalf("after completion %d: %d interrupts, want %d", i+1, r2.irqs.Load(), want)
		}
	}
}

func TestResetAndReinit(t *testing.T) {
	r := newRig(t)
	buf := r.drv.Alloc(64, 8)
	for round := range 3 {
		if err := r.drv.Init(virtio.FVersion1, 16); err != nil {
			t.Fatal(err)
		}
		for range 10 {
			if _, err := r.drv.Q[0].Submit(time.Second, virtiotest.Buf{Addr: buf, Len: 8}, virtiotest.Buf{Addr: buf + 8, Len: 8, Write: true}); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		r.drv.Write(virtio.RegStatus, 0)
	}
	if r.dev.started.Load() != 3 || r.dev.stop != nil {
		t.Fatal("device not stopped at reset")
	}
}

// Malformed chains fail one by one; the queue keeps working.
func TestMalformedChains(t *testing.T) {
	r := newRig(t)
	if err := r.drv.Init(virtio.FVersion1, 16); err != nil {
		t.Fatal(err)
	}
	q := r.drv.Q[0]
	buf := r.drv.Alloc(64, 8)
	ids := q.TakeFree(8)
	a, b, c := ids[0], ids[1], ids[2]
	cases := []struct {
		name  string
		setup func()
	}{
		{"outside memory", func() { q.WriteDesc(a, 1<<20-4, 8, 0, 0) }},
		{"overflowing address", func() { q.WriteDesc(a, ^uint64(0)-2, 8, 0, 0) }},
		{"huge length", func() { q.WriteDesc(a, buf, ^uint32(0), 0, 0) }},
		{"loop", func() {
			q.WriteDesc(a, buf, 8, virtio.DescFNext, b)
			q.WriteDesc(b, buf, 8, virtio.DescFNext, a)
		}},
		{"self loop", func() { q.WriteDesc(a, buf, 8, virtio.DescFNext, a) }},
		{"next out of range", func() { q.WriteDesc(a, buf, 8, virtio.DescFNext, 999) }},
		{"readable after writable", func() {
			q.WriteDesc(a, buf, 8, virtio.DescFWrite|virtio.DescFNext, b)
			q.WriteDesc(b, buf, 8, virtio.DescFNext, c)
			q.WriteDesc(c, buf, 8, virtio.DescFWrite, 0)
		}},
		{"indirect", func() { q.WriteDesc(a, buf, 16, virtio.DescFIndirect, 0) }},
	}
	for i, tc := range cases {
		tc.setup()
		old := q.AvailIdx()
		q.AddRaw(a)
		q.Kick()
		_ = old
		u, err := q.Wait(1, time.Second)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if u[0].ID != a || u[0].Len != 0 {
			t.Fatalf("%s: completion %+v", tc.name, u[0])
		}
		if got := r.dev.bad.Load(); got != int64(i+1) {
			t.Fatalf("%s: device saw %d malformed chains, want %d", tc.name, got, i+1)
		}
	}
	if r.drv.Read(virtio.RegStatus)&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatal("malformed chains must not break the queue")
	}
	// Still working.
	if _, err := q.Submit(time.Second, virtiotest.Buf{Addr: buf, Len: 8}, virtiotest.Buf{Addr: buf + 8, Len: 8, Write: true}); err != nil {
		t.Fatal(err)
	}
}

// Rings the device cannot trust break the queue: DEVICE_NEEDS_RESET and a
// configuration-change interrupt; a reset repairs it.
func TestBrokenRing(t *testing.T) {
	for _, name := range []string{"head out of range", "avail index jump"} {
		r := newRig(t)
		if err := r.drv.Init(virtio.FVersion1, 16); err != nil {
			t.Fatal(err)
		}
		q := r.drv.Q[0]
		if name == "head out of range" {
			q.AddRaw(16)
		} else {
			r.mem.Store16(q.Avail+2, 100)
		}
		q.Kick()
		end := time.Now().Add(time.Second)
		for r.drv.Read(virtio.RegStatus)&virtio.StatusDeviceNeedsReset == 0 {
			if time.Now().After(end) {
				t.Fatalf("%s: no DEVICE_NEEDS_RESET", name)
			}
			time.Sleep(100 * time.Microsecond)
		}
		if r.drv.Read(virtio.RegInterruptStatus)&virtio.InterruptConfigChange == 0 || r.irqs.Load() == 0 {
			t.Fatalf("%s: no configuration-change interrupt", name)
		}
		if err := r.drv.Init(virtio.FVersion1, 16); err != nil {
			t.Fatalf("%s: re-init after reset: %v", name, err)
		}
		buf := r.drv.Alloc(16, 8)
		if _, err := r.drv.Q[0].Submit(time.Second, virtiotest.Buf{Addr: buf, Len: 8}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// FuzzQueue lets arbitrary bytes be the descriptor table and avail ring:
// the device side must never panic, every buffer it hands out must lie in
// memory, and the used ring must stay in bounds.
func FuzzQueue(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0}, uint16(1), []byte{0, 0})
	f.Add(bytes.Repeat([]byte{0xff}, 64), uint16(9), []byte{1, 0, 2, 0})
	f.Add([]byte{0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 3, 0, 1, 0, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0, 0, 0}, uint16(2), []byte{0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, descs []byte, availIdx uint16, ring []byte) {
		const size = 8
		mem := virtio.NewMemory(make([]byte, 64<<10))
		qc := virtio.QueueConfig{Size: size, Desc: 0x100, Driver: 0x400, Device: 0x800}
		table, _ := mem.Slice(qc.Desc, virtio.DescSize*size)
		copy(table, descs)
		avail, _ := mem.Slice(qc.Driver+4, 2*size)
		copy(avail, ring)
		mem.Store16(qc.Driver+2, availIdx)
		broken := false
		q, err := virtio.NewQueue(0, mem, qc, availIdx&1 != 0, nil, func() {}, func(error) { broken = true })
		if err != nil {
			t.Fatal(err)
		}
		var c virtio.Chain
		for i := 0; i < 2*size; i++ {
			ok, err := q.Next(&c)
			if err != nil {
				if !broken {
					t.Fatal("error without broken callback")
				}
				return
			}
			if !ok {
				break
			}
			if c.Head >= size {
				t.Fatalf("head %d", c.Head)
			}
			if len(c.Readable)+len(c.Writable) > size {
				t.Fatalf("%d segments from %d descriptors", len(c.Readable)+len(c.Writable), size)
			}
			// Touch every byte the device would.
			b := make([]byte, c.ReadableLen())
			c.Gather(b, 0)
			c.Scatter(0, make([]byte, c.WritableLen()))
			if len(c.Tail) > 0 {
				c.Tail[len(c.Tail)-1] = 1
			}
			q.Complete(c.Head, uint32(c.WritableLen()))
		}
	})
}
