package netdev_test

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/netdev"
	"github.com/cumulusdb/cumulus/vmm/virtio/virtiotest"
)

type sink struct {
	mu     sync.Mutex
	frames [][]byte
}

func (s *sink) Send(f []byte) {
	s.mu.Lock()
	s.frames = append(s.frames, append([]byte(nil), f...))
	s.mu.Unlock()
}

func setup(t *testing.T) (*netdev.Device, *virtiotest.Driver, virtio.Memory, *sink, *virtio.Transport) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	d, err := netdev.New(mac, 1500, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{}
	d.SetBackend(s)
	mem := virtio.NewMemory(make([]byte, 1<<20))
	tr := virtio.NewTransport(d, mem, nil, nil)
	t.Cleanup(func() { tr.Close() })
	drv := virtiotest.New(tr, mem, 0x1000)
	if err := drv.Init(virtio.FVersion1|netdev.FMAC|netdev.FMTU|netdev.FStatus, 8); err != nil {
		t.Fatal(err)
	}
	return d, drv, mem, s, tr
}

func TestConfig(t *testing.T) {
	_, drv, _, _, _ := setup(t)
	if drv.Read(virtio.RegDeviceID) != 1 || drv.Features&netdev.FMAC == 0 {
		t.Fatal("identity")
	}
	w0, w1, w2 := drv.Read(virtio.RegConfig), drv.Read(virtio.RegConfig+4), drv.Read(virtio.RegConfig+8)
	if w0 != 0x00000002 || w1&0xffff != 0x0100 || w1>>16 != 1 || w2>>16 != 1500 {
		t.Fatalf("config %#x %#x %#x", w0, w1, w2)
	}
}

func TestTransmit(t *testing.T) {
	_, drv, mem, s, tr := setup(t)
	tx := drv.Q[1]
	a := drv.Alloc(2048, 16)
	b, _ := mem.Slice(a, 2048)
	for i := range b {
		b[i] = byte(i)
	}
	// Header and frame in separate buffers (any layout is allowed).
	if _, err := tx.Submit(time.Second, virtiotest.Buf{Addr: a, Len: 12}, virtiotest.Buf{Addr: a + 12, Len: 60}); err != nil {
		t.Fatal(err)
	}
	// A runt and an oversized chain are dropped.
	tx.Submit(time.Second, virtiotest.Buf{Addr: a, Len: 20})
	if _, err := tx.Submit(time.Second, virtiotest.Buf{Addr: a, Len: 12}, virtiotest.Buf{Addr: 0, Len: netdev.MaxFrame + 1}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.frames) != 1 || !bytes.Equal(s.frames[0], b[12:72]) {
		t.Fatalf("frames %d", len(s.frames))
	}
	if st := tr.Stats(); st.Drops != 2 || st.WriteBytes != 60 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReceive(t *testing.T) {
	d, drv, mem, _, tr := setup(t)
	rx := drv.Q[0]
	frame := bytes.Repeat([]byte{0xab}, 100)
	// No buffer yet: the frame waits.
	d.Receive(frame)
	time.Sleep(5 * time.Millisecond)
	small := drv.Alloc(64, 16)
	big := drv.Alloc(2048, 16)
	old := rx.AvailIdx()
	rx.Add(virtiotest.Buf{Addr: small, Len: 64, Write: true}) // too small: kept for a smaller frame
	if !rx.NeedKick(old) {
		t.Fatal("device waiting for buffers does not ask for a notification")
	}
	rx.Kick()
	time.Sleep(5 * time.Millisecond)
	if u := rx.Poll(); len(u) != 0 {
		t.Fatalf("frame written into a too small buffer: %+v", u)
	}
	old = rx.AvailIdx()
	rx.Add(virtiotest.Buf{Addr: big, Len: 2048, Write: true})
	rx.KickIfNeeded(old)
	d.Receive(frame[:40]) // fits the small buffer the device kept
	u, err := rx.Wait(1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if u[0].Len != 12+40 {
		t.Fatalf("used %+v", u)
	}
	got, _ := mem.Slice(small, 52)
	if got[10] != 1 || !bytes.Equal(got[12:], frame[:40]) {
		t.Fatal("received frame")
	}
	if st := tr.Stats(); st.Drops != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A backlog past RxBacklog drops instead of blocking.
	for range netdev.RxBacklog + 10 {
		d.Receive(frame)
	}
}

// A transmit notification is served before it returns (on the notifying
// thread): the frame has reached the backend and the chain is used.
func TestTransmitInline(t *testing.T) {
	_, drv, _, s, _ := setup(t)
	tx := drv.Q[1]
	a := drv.Alloc(2048, 16)
	for i := range 3 {
		old := tx.AvailIdx()
		if _, err := tx.Add(virtiotest.Buf{Addr: a, Len: 12 + 60}); err != nil {
			t.Fatal(err)
		}
		if !tx.NeedKick(old) {
			t.Fatalf("frame %d: the device does not ask to be notified", i)
		}
		tx.Kick()
		s.mu.Lock()
		n := len(s.frames)
		s.mu.Unlock()
		if n != i+1 || len(tx.Poll()) != 1 {
			t.Fatalf("frame %d: %d frames sent, not completed by the notification", i, n)
		}
	}
}

// Deliver without urgency leaves the interrupt for a while; an urgent
// frame raises it at once.
func TestDeliverLazy(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	d, err := netdev.New(mac, 1500, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtio.NewMemory(make([]byte, 1<<20))
	irq := make(chan time.Time, 16)
	tr := virtio.NewTransport(d, mem, func() { irq <- time.Now() }, nil)
	t.Cleanup(func() { tr.Close() })
	drv := virtiotest.New(tr, mem, 0x1000)
	if err := drv.Init(virtio.FVersion1|virtio.FRingEventIdx|netdev.FMAC, 8); err != nil {
		t.Fatal(err)
	}
	rx := drv.Q[0]
	for range 4 {
		rx.Add(virtiotest.Buf{Addr: drv.Alloc(2048, 16), Len: 2048, Write: true})
	}
	rx.Kick()
	time.Sleep(time.Millisecond) // the device has seen the buffers
	frame := bytes.Repeat([]byte{1}, 60)
	rx.Poll() // asks for an interrupt at the next completion (as every Poll does)
	for _, urgent := range []bool{false, true} {
		start := time.Now()
		d.Deliver(frame, urgent)
		if !urgent && len(irq) != 0 {
			t.Fatal("lazy frame raised its interrupt at once")
		}
		select {
		case at := <-irq:
			if waited := at.Sub(start); urgent && waited > netdev.LazyDelay/2 {
				t.Errorf("urgent frame's interrupt after %v", waited)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("urgent %v: no interrupt", urgent)
		}
		if len(rx.Poll()) != 1 {
			t.Fatal("frame not delivered")
		}
	}
}
