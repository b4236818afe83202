package usernet_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/usernet"
	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/netdev"
	"github.com/cumulusdb/cumulus/vmm/virtio/virtiotest"
)

// guest is a fake guest: a second gVisor stack whose link is the test
// driver of the virtio-net device model, so every frame crosses the
// device's queues in both directions.
type guest struct {
	t    *testing.T
	s    *stack.Stack
	ep   *channel.Endpoint
	mem  virtio.Memory
	tr   *virtio.Transport
	drv  *virtiotest.Driver
	irq  chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
	net  *usernet.Network
	dev  *netdev.Device
}

// slot holds the virtio header and a frame of the link's MTU.
const slot = (netdev.HeaderSize + 14 + boot.NetMTU + 63) &^ 63

func newGuest(t *testing.T, cfg usernet.Config) *guest {
	t.Helper()
	g := &guest{t: t, mem: virtio.NewMemory(make([]byte, 16<<20)), irq: make(chan struct{}, 1), stop: make(chan struct{})}
	mac, _ := net.ParseMAC(boot.GuestMAC)
	dev, err := netdev.New(mac, boot.NetMTU, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.dev = dev
	g.net, err = usernet.New(cfg, dev.Deliver)
	if err != nil {
		t.Fatal(err)
	}
	dev.SetBackend(g.net)
	g.tr = virtio.NewTransport(dev, g.mem, func() {
		select {
		case g.irq <- struct{}{}:
		default:
		}
	}, nil)
	g.drv = virtiotest.New(g.tr, g.mem, 0x1000)
	if err := g.drv.Init(virtio.FVersion1|virtio.FRingEventIdx|netdev.FMAC|netdev.FMTU|netdev.FStatus, 32); err != nil {
		t.Fatal(err)
	}
	var cfgMAC [6]byte
	for i := range cfgMAC {
		var b [1]byte
		g.tr.MMIORead(virtio.RegConfig+uint64(i), b[:])
		cfgMAC[i] = b[0]
	}
	if !bytes.Equal(cfgMAC[:], mac) {
		t.Fatalf("config MAC %x", cfgMAC)
	}

	g.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	// The test's guest stack queues its frames for the transmit goroutine
	// below; a queue that overflows drops them (TCP recovers, but under a
	// loaded machine the retransmission back-off outlasted the echo
	// test's 30 s deadline), so it is larger than anything in flight.
	g.ep = channel.New(4096, boot.NetMTU+14, tcpip.LinkAddress(mac))
	if e := g.s.CreateNIC(1, ethernet.New(g.ep)); e != nil {
		t.Fatal(e)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr(boot.GuestIP), PrefixLen: boot.NetPrefix}}
	if e := g.s.AddProtocolAddress(1, pa, stack.AddressProperties{}); e != nil {
		t.Fatal(e)
	}
	g.s.SetRouteTable([]tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: 1}})

	rx, tx := g.drv.Q[0], g.drv.Q[1]
	rxBase := g.drv.Alloc(uint64(rx.Size)*slot, 4096)
	txBase := g.drv.Alloc(4*uint64(tx.Size)*slot, 4096)
	rxSlot := map[uint16]uint64{}
	for i := range uint64(rx.Size) {
		h, err := rx.Add(virtiotest.Buf{Addr: rxBase + i*slot, Len: slot, Write: true})
		if err != nil {
			t.Fatal(err)
		}
		rxSlot[h] = rxBase + i*slot
	}
	rx.Kick()
	g.wg.Add(2)
	// Receive: completed buffers go to the guest stack and are re-posted.
	go func() {
		defer g.wg.Done()
		for {
			got := false
			old := rx.AvailIdx()
			for _, u := range rx.Poll() {
				got = true
				a := rxSlot[u.ID]
				delete(rxSlot, u.ID)
				b, _ := g.mem.Slice(a, uint64(u.Len))
				if len(b) > netdev.HeaderSize {
					if n := binary.LittleEndian.Uint16(b[10:]); n != 1 {
						t.Errorf("num_buffers %d", n)
					}
					pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), b[netdev.HeaderSize:]...))})
					g.ep.InjectInbound(0, pkt)
					pkt.DecRef()
				}
				h, err := rx.Add(virtiotest.Buf{Addr: a, Len: slot, Write: true})
				if err != nil {
					t.Error(err)
					return
				}
				rxSlot[h] = a
			}
			if got {
				rx.KickIfNeeded(old)
				continue
			}
			select {
			case <-g.stop:
				return
			case <-g.irq:
			case <-time.After(time.Millisecond):
			}
		}
	}()
	// Transmit: the guest stack's frames go on the transmit queue.
	go func() {
		defer g.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-g.stop; cancel() }()
		next := uint64(0)
		for {
			pkt := g.ep.ReadContext(ctx)
			if pkt == nil {
				return
			}
			a := txBase + (next%(4*uint64(tx.Size)))*slot
			next++
			b, _ := g.mem.Slice(a, slot)
			clear(b[:netdev.HeaderSize])
			n := netdev.HeaderSize
			for _, s := range pkt.AsSlices() {
				n += copy(b[n:], s)
			}
			pkt.DecRef()
			g.send(tx, a, uint32(n))
		}
	}()
	t.Cleanup(g.close)
	return g
}

// send puts one buffer on the transmit queue, reaping completions first.
func (g *guest) send(tx *virtiotest.DQueue, a uint64, n uint32) {
	for {
		tx.Poll()
		old := tx.AvailIdx()
		if _, err := tx.Add(virtiotest.Buf{Addr: a, Len: n}); err == nil {
			tx.KickIfNeeded(old)
			return
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func (g *guest) close() {
	close(g.stop)
	g.wg.Wait()
	g.tr.Close()
	g.net.Close()
	g.s.Close()
	g.s.Wait()
}

func addr(s string) tcpip.Address { return tcpip.AddrFrom4(netip.MustParseAddr(s).As4()) }

func (g *guest) listen(port uint16) *gonet.TCPListener {
	ln, err := gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: 1, Addr: addr(boot.GuestIP), Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { ln.Close() })
	return ln
}

func TestPublishHTTP(t *testing.T) {
	g := newGuest(t, usernet.Config{Forwards: []usernet.Forward{{HostAddr: "127.0.0.1", GuestPort: 80}}})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the guest, %s %s", r.Method, r.URL.Path)
	})}
	go srv.Serve(g.listen(80))
	t.Cleanup(func() { srv.Close() })
	url := "http://" + g.net.Listeners()[0].Addr().String() + "/x"
	c := &http.Client{Timeout: 10 * time.Second}
	for i := range 20 {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello from the guest, GET /x" {
			t.Fatalf("body %q", body)
		}
	}
	st := g.tr.Stats()
	t.Logf("device stats %+v, network %+v", st, g.net.Stats())
	if st.Requests == 0 || g.net.Stats().Inbound == 0 {
		t.Fatal("stats")
	}
}

// echo serves port 7: copies until EOF, then half-closes.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(c, c)
			c.(interface{ CloseWrite() error }).CloseWrite()
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}()
	}
}

func TestPublishEcho(t *testing.T) {
	g := newGuest(t, usernet.Config{Forwards: []usernet.Forward{{HostAddr: "127.0.0.1", GuestPort: 7}}})
	go echo(g.listen(7))
	data := make([]byte, 4<<20)
	rand.Read(data)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", g.net.Listeners()[0].Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			go func() {
				c.Write(data)
				c.(*net.TCPConn).CloseWrite() // the half-close must reach the guest
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("echo: %d bytes, err %v", len(got), err)
			}
		}()
	}
	wg.Wait()
	t.Logf("device stats %+v", g.tr.Stats())
}

// A connection to a guest port nobody listens on is closed at once.
func TestPublishRefused(t *testing.T) {
	g := newGuest(t, usernet.Config{Forwards: []usernet.Forward{{HostAddr: "127.0.0.1", GuestPort: 9}}})
	c, err := net.Dial("tcp", g.net.Listeners()[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("read %d, %v", n, err)
	}
	if g.net.Stats().InboundFailed != 1 {
		t.Fatal("InboundFailed")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Guest connections to the gateway reach the host's loopback.
func TestOutbound(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go echo(ln)
	g := newGuest(t, usernet.Config{Outbound: true})
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, g.s, tcpip.FullAddress{NIC: 1, Addr: addr(boot.GatewayIP), Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("outbound "), 10000)
	go func() {
		c.Write(msg)
		c.CloseWrite()
	}()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	// A port with no host listener: the guest sees a refusal.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := uint16(l2.Addr().(*net.TCPAddr).Port)
	l2.Close()
	if _, err := gonet.DialContextTCP(ctx, g.s, tcpip.FullAddress{NIC: 1, Addr: addr(boot.GatewayIP), Port: closed}, ipv4.ProtocolNumber); err == nil {
		t.Fatal("connection to a closed host port succeeded")
	}
	if g.net.Stats().Outbound != 1 {
		t.Fatalf("stats %+v", g.net.Stats())
	}
}

// Garbage frames from the guest are dropped; the network keeps working.
func TestMalformedFrames(t *testing.T) {
	g := newGuest(t, usernet.Config{Forwards: []usernet.Forward{{HostAddr: "127.0.0.1", GuestPort: 7}}})
	go echo(g.listen(7))
	tx := g.drv.Q[1]
	// Each frame has its own buffer: the device reads it after send
	// returns.
	const frames = 1000
	big := g.drv.Alloc(66000, 16)
	bb, _ := g.mem.Slice(big, 66000)
	rand.Read(bb)
	base := g.drv.Alloc(frames*1600, 16)
	gwMAC, _ := net.ParseMAC(boot.GatewayMAC)
	for i := range frames {
		a := base + uint64(i)*1600
		b, _ := g.mem.Slice(a, 1600)
		n := 1 + i*7%1600
		rand.Read(b[:n])
		if i%3 == 0 && n > 26 {
			// Valid Ethernet header and type, garbage after.
			copy(b[12:], gwMAC)
			binary.BigEndian.PutUint16(b[24:], 0x0800)
			if i%2 == 0 {
				binary.BigEndian.PutUint16(b[24:], 0x0806)
			}
		}
		if i%97 == 0 {
			a, n = big, 66000 // oversized
		}
		g.send(tx, a, uint32(n))
	}
	c, err := net.Dial("tcp", g.net.Listeners()[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("still alive"))
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	if string(got) != "still alive" {
		t.Fatalf("got %q", got)
	}
}
