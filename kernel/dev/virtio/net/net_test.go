package net_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
	vnet "github.com/cumulusdb/cumulus/kernel/dev/virtio/net"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio/virtiotest"
)

var mac = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

func newFake(features uint64, queueMax int) (*virtiotest.Device, *virtio.SimMem) {
	mem := virtio.NewSimMem(0x4000_0000, 8<<20)
	cfg := make([]byte, 16)
	copy(cfg, mac[:])
	binary.LittleEndian.PutUint16(cfg[6:], 1) // link up
	binary.LittleEndian.PutUint16(cfg[10:], 1500)
	return virtiotest.New(mem, vnet.DeviceID, features, cfg, 2, queueMax), mem
}

func open(t *testing.T, f *virtiotest.Device, mem *virtio.SimMem) *vnet.Device {
	t.Helper()
	d, err := vnet.Open(f, f.IRQ, mem, vnet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func frame(i, n int) []byte {
	f := make([]byte, n)
	copy(f, mac[:])
	binary.LittleEndian.PutUint32(f[14:], uint32(i))
	for j := 18; j < n; j++ {
		f[j] = byte(i + j)
	}
	return f
}

// deliver puts frames into the driver's posted receive buffers, as the
// device does, and returns how many fit.
func deliver(q *virtiotest.Queue, frames [][]byte) int {
	n := 0
	for _, fr := range frames {
		c, ok := q.Pop()
		if !ok {
			break
		}
		if len(c.Segs) != 1 || !c.Segs[0].Writes || len(c.Segs[0].Data) < vnet.HeaderSize+1514 {
			panic(fmt.Sprintf("bad receive buffer %+v", c.Segs))
		}
		b := c.Segs[0].Data
		clear(b[:vnet.HeaderSize])
		binary.LittleEndian.PutUint16(b[10:], 1) // num_buffers
		copy(b[vnet.HeaderSize:], fr)
		q.Push(c.Head, uint32(vnet.HeaderSize+len(fr)))
		n++
	}
	q.Signal()
	return n
}

func TestConfig(t *testing.T) {
	f, mem := newFake(vnet.FMAC|vnet.FStatus|vnet.FMTU|virtio.FEventIdx, 64)
	d := open(t, f, mem)
	if d.MAC() != mac || d.MTU() != 1500 || d.MaxFrame() != 1514 || !d.LinkUp() {
		t.Fatalf("mac %x mtu %d link %v", d.MAC(), d.MTU(), d.LinkUp())
	}
	if f.Status()&virtio.StatusDriverOK == 0 {
		t.Fatal("not DRIVER_OK")
	}
	// All receive buffers are posted at once.
	n := 0
	for {
		if _, ok := f.Queue(0).Pop(); !ok {
			break
		}
		n++
	}
	if n != 64 {
		t.Fatalf("%d receive buffers posted, want 64", n)
	}
}

// Frames sent in batches arrive intact with a zero header; a full ring
// takes a prefix; completions free the slots.
func TestSend(t *testing.T) {
	f, mem := newFake(vnet.FMAC|virtio.FEventIdx, 16)
	d := open(t, f, mem)
	txq := f.Queue(1)
	var got [][]byte
	drain := func() {
		for {
			c, ok := txq.Pop()
			if !ok {
				break
			}
			var b []byte
			for _, s := range c.Segs {
				if s.Writes {
					panic("device-writable transmit buffer")
				}
				b = append(b, s.Data...)
			}
			if !bytes.Equal(b[:vnet.HeaderSize], make([]byte, vnet.HeaderSize)) {
				panic("non-zero virtio_net_hdr")
			}
			got = append(got, b[vnet.HeaderSize:])
			txq.Push(c.Head, 0)
		}
		txq.Signal()
	}
	var frames [][]byte
	for i := 0; i < 40; i++ {
		frames = append(frames, frame(i, 60+i*37))
	}
	notifies := f.Notifies.Load()
	n, err := d.Send(frames)
	if err != nil || n != 16 {
		t.Fatalf("first batch took %d, %v (ring of 16)", n, err)
	}
	if f.Notifies.Load() != notifies+1 {
		t.Fatalf("%d notifications for one batch", f.Notifies.Load()-notifies)
	}
	sent := n
	for sent < len(frames) {
		drain()
		n, err := d.Send(frames[sent:])
		if err != nil || n == 0 {
			t.Fatalf("send: %d %v", n, err)
		}
		sent += n
	}
	drain()
	if len(got) != len(frames) {
		t.Fatalf("%d frames arrived", len(got))
	}
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if d.TxFree() != 16 {
		t.Fatalf("%d transmit slots free after all completed", d.TxFree())
	}
	if _, err := d.Send([][]byte{make([]byte, 1515)}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("oversized frame: %v", err)
	}
}

// Receive delivers frames in order, reposts buffers (the ring wraps many
// times) and Wait is woken by the interrupt.
func TestReceive(t *testing.T) {
	for _, ev := range []uint64{0, virtio.FEventIdx} {
		f, mem := newFake(vnet.FMAC|ev, 8)
		d := open(t, f, mem)
		d.SetSpinTime(0)
		rxq := f.Queue(0)
		next := 0
		for round := 0; round < 100; round++ {
			var frames [][]byte
			for i := 0; i < 1+round%8; i++ {
				frames = append(frames, frame(next+i, 64+(next+i)%1400))
			}
			if k := deliver(rxq, frames); k != len(frames) {
				t.Fatalf("round %d: only %d receive buffers available", round, k)
			}
			n, err := d.Receive(func(fr []byte) {
				if want := frame(next, 64+next%1400); !bytes.Equal(fr, want) {
					t.Fatalf("frame %d differs (len %d, want %d)", next, len(fr), len(want))
				}
				next++
			})
			if err != nil || n != len(frames) {
				t.Fatalf("received %d of %d: %v", n, len(frames), err)
			}
		}
		if f.Interrupts.Load() != 0 {
			t.Fatalf("interrupts while polling: %d", f.Interrupts.Load())
		}
		// Wait sleeps until a frame comes.
		go func() {
			time.Sleep(20 * time.Millisecond)
			deliver(rxq, [][]byte{frame(next, 100)})
		}()
		if !d.Wait(5 * time.Second) {
			t.Fatal("Wait timed out")
		}
		if n, _ := d.Receive(func([]byte) {}); n != 1 {
			t.Fatalf("received %d after Wait", n)
		}
		rx, _ := d.Stats()
		if rx.Wakeups != 1 {
			t.Fatalf("rx stats %+v", rx)
		}
	}
}

// Send and Receive from different goroutines against a device looping
// frames back from its own goroutine (run with -race).
func TestLoopbackConcurrent(t *testing.T) {
	f, mem := newFake(vnet.FMAC|virtio.FEventIdx, 32)
	f.NoNotify = true
	d := open(t, f, mem)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the device: transmit queue → receive queue
		defer wg.Done()
		txq, rxq := f.Queue(1), f.Queue(0)
		var pending [][]byte
		tick := time.NewTicker(50 * time.Microsecond)
		defer tick.Stop()
		for {
			for {
				c, ok := txq.Pop()
				if !ok {
					break
				}
				pending = append(pending, append([]byte(nil), c.Segs[0].Data[vnet.HeaderSize:]...))
				txq.Push(c.Head, 0)
			}
			txq.Signal()
			k := deliver(rxq, pending)
			pending = pending[k:]
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	const total = 3000
	var sendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < total; {
			n, err := d.Send([][]byte{frame(i, 200), frame(i+1, 200)}[:min(2, total-i)])
			if err != nil {
				sendErr = err
				return
			}
			i += n
			if n == 0 {
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	got := 0
	deadline := time.Now().Add(20 * time.Second)
	for got < total && time.Now().Before(deadline) {
		d.Wait(100 * time.Millisecond)
		_, err := d.Receive(func(fr []byte) {
			if !bytes.Equal(fr, frame(got, 200)) {
				t.Errorf("frame %d out of order or corrupt", got)
			}
			got++
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if sendErr != nil || got != total {
		t.Fatalf("received %d of %d, send error %v", got, total, sendErr)
	}
}
