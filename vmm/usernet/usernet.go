// Package usernet is the user-mode network behind the guest's virtio-net
// device: a TCP/IP stack (gVisor's tcpip) inside the monitor plays the
// gateway of a private subnet, so the guest gets a network without root,
// TAP devices or host routing.
//
// Design:
//   - the link is Ethernet over a channel endpoint: frames from the guest
//     enter with FromGuest, frames for the guest leave through the
//     function given to New (the device's receive queue), called on the
//     goroutine that wrote them (the endpoint's write notification drains
//     it), so a host write reaches the guest's ring without a goroutine
//     hand-off. The monitor's stack is GatewayIP (kernel/boot), the guest
//     GuestIP;
//   - published ports (cumulus run -p): for each Forward the monitor
//     listens on the host and, for every accepted connection, dials the
//     guest's port through its stack and copies both ways;
//   - outbound: a TCP connection from the guest to GatewayIP:P is
//     accepted by the stack's forwarder and joined to a connection to
//     the host's 127.0.0.1:P (refused there: the guest sees a reset).
//
// Invariants: a frame from the guest is parsed only by the stack, which
// drops what it cannot parse; no guest input panics the monitor. Copies
// are half-close aware: EOF one way closes the write side of the other
// connection, and both are closed once both ways are done (or either
// fails). Close stops listeners, connections and the stack.
package usernet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// LinkBuffer is the default TCP send and receive buffer of the stacks on
// either side of the guest's link (4 MiB: sixty-odd 64 KiB segments).
const LinkBuffer = 4 << 20

// copyBuffer is what a forwarded connection reads from one side at a
// time and writes to the other: large, so that the stack cuts a host
// read into full segments and one short one, not a short one every
// 64 KiB.
const copyBuffer = 1 << 20

// Forward publishes a guest TCP port on the host.
type Forward struct {
	HostAddr  string // "" = all interfaces
	HostPort  int    // 0: any free port (see Network.Listeners)
	GuestPort int
}

// Config describes the network.
type Config struct {
	Forwards []Forward
	// Outbound forwards guest connections to GatewayIP:P to the host's
	// 127.0.0.1:P.
	Outbound bool
	// OutboundHost replaces 127.0.0.1 as the target of outbound
	// connections (tests).
	OutboundHost string
	MTU          int // IP MTU (default boot.NetMTU)
	Log          *slog.Logger
}

// Stats are the network's counts.
type Stats struct {
	Inbound       uint64 // host connections forwarded to the guest
	InboundFailed uint64 // ... that the guest refused
	Outbound      uint64 // guest connections forwarded to the host
	FramesIn      uint64 // from the guest
	FramesOut     uint64 // to the guest
}

// Network is the monitor's side of the guest's network.
type Network struct {
	cfg     Config
	s       *stack.Stack
	ep      *channel.Endpoint
	link    *link
	toGuest func(frame []byte, urgent bool) bool
	outMu   sync.Mutex // serialises deliveries to the guest (in order)
	out     []byte     // outMu
	guest   tcpip.Address
	gw      tcpip.Address
	lns     []net.Listener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[io.Closer]struct{}
	closed bool

	inbound, inboundFailed, outbound, framesIn, framesOut atomic.Uint64
}

const nicID = 1

// New builds the stack and opens the host listeners of the forwards (so
// that a port in use fails the boot, not the first connection). Frames
// for the guest go to toGuest, urgent unless the frame is a bare TCP
// acknowledgement (see pureACK); toGuest must not block and must copy the
// frame if it keeps it.
func New(cfg Config, toGuest func(frame []byte, urgent bool) bool) (*Network, error) {
	if cfg.MTU == 0 {
		cfg.MTU = boot.NetMTU
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.OutboundHost == "" {
		cfg.OutboundHost = "127.0.0.1"
	}
	gwMAC, err := net.ParseMAC(boot.GatewayMAC)
	if err != nil {
		return nil, fmt.Errorf("usernet: gateway MAC: %w", err)
	}
	n := &Network{cfg: cfg, toGuest: toGuest, guest: addr4(boot.GuestIP), gw: addr4(boot.GatewayIP), conns: map[io.Closer]struct{}{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	n.ep = channel.New(512, uint32(cfg.MTU)+14, tcpip.LinkAddress(gwMAC))
	n.link = &link{Endpoint: n.ep}
	if e := n.s.CreateNIC(nicID, ethernet.New(n.link)); e != nil {
		n.s.Close()
		return nil, fmt.Errorf("usernet: create NIC: %s", e)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: n.gw, PrefixLen: boot.NetPrefix}}
	if e := n.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); e != nil {
		n.s.Close()
		return nil, fmt.Errorf("usernet: gateway address: %s", e)
	}
	n.s.SetRouteTable([]tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: nicID}})
	sack := tcpip.TCPSACKEnabled(true)
	n.s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	// Buffers that keep a 64 KiB-segment link busy: the guest's
	// acknowledgements may wait for its next exit (doorbells), so a
	// window of a few segments would leave the link idle between them.
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: LinkBuffer, Max: 2 * LinkBuffer}
	n.s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: LinkBuffer, Max: 2 * LinkBuffer}
	n.s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	if cfg.Outbound {
		fwd := tcp.NewForwarder(n.s, 0, 256, n.outboundConn)
		n.s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	}
	for _, f := range cfg.Forwards {
		ln, err := net.Listen("tcp", net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)))
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("usernet: publish guest port %d: %w", f.GuestPort, err)
		}
		n.lns = append(n.lns, ln)
		n.wg.Add(1)
		go n.accept(ln, f.GuestPort)
	}
	n.ep.AddNotify(n)
	return n, nil
}

func addr4(s string) tcpip.Address {
	a := netip.MustParseAddr(s).As4()
	return tcpip.AddrFrom4(a)
}

// Listeners are the host listeners, in Forwards order.
func (n *Network) Listeners() []net.Listener { return n.lns }

// Stack is the monitor's stack (tests).
func (n *Network) Stack() *stack.Stack { return n.s }

// Stats returns the counts.
func (n *Network) Stats() Stats {
	return Stats{Inbound: n.inbound.Load(), InboundFailed: n.inboundFailed.Load(), Outbound: n.outbound.Load(),
		FramesIn: n.framesIn.Load(), FramesOut: n.framesOut.Load()}
}

// FromGuest hands the stack a frame the guest sent. The stack copies
// what it keeps.
func (n *Network) FromGuest(frame []byte) {
	if len(frame) < 14 {
		return
	}
	n.framesIn.Add(1)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	n.ep.InjectInbound(0, pkt) // the Ethernet endpoint reads the type from the header
	pkt.DecRef()
}

// Send implements the virtio-net device's Backend.
func (n *Network) Send(frame []byte) { n.FromGuest(frame) }

// link is the stack's side of the guest link: the channel endpoint, with
// checksum offload. Frames from the guest are never verified (the link
// is memory: nothing corrupts them); frames to the guest go without
// transport checksums once its driver accepted that (OffloadChecksums).
type link struct {
	*channel.Endpoint
	txOffload atomic.Bool
}

func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	c := stack.CapabilityRXChecksumOffload
	if l.txOffload.Load() {
		c |= stack.CapabilityTXChecksumOffload
	}
	return c
}

// OffloadChecksums implements netdev.ChecksumOffloader.
func (n *Network) OffloadChecksums(toGuest bool) { n.link.txOffload.Store(toGuest) }

// WriteNotify implements channel.Notification: the stack queued a frame
// for the guest. Whoever queued it delivers every queued frame, in
// order, before returning (toGuest does not block).
func (n *Network) WriteNotify() {
	n.outMu.Lock()
	defer n.outMu.Unlock()
	for {
		pkt := n.ep.Read()
		if pkt == nil {
			return
		}
		n.out = n.out[:0]
		for _, s := range pkt.AsSlices() {
			n.out = append(n.out, s...)
		}
		pkt.DecRef()
		n.framesOut.Add(1)
		n.toGuest(n.out, !pureACK(n.out))
	}
}

func (n *Network) track(c io.Closer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.conns[c] = struct{}{}
	return true
}

func (n *Network) untrack(c io.Closer) {
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
}

// accept serves one published port.
func (n *Network) accept(ln net.Listener, guestPort int) {
	defer n.wg.Done()
	for {
		hc, err := ln.Accept()
		if err != nil {
			if n.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				n.cfg.Log.Warn("usernet: accept", "addr", ln.Addr(), "err", err)
				time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
				continue
			}
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
			gc, err := gonet.DialContextTCP(ctx, n.s, tcpip.FullAddress{NIC: nicID, Addr: n.guest, Port: uint16(guestPort)}, ipv4.ProtocolNumber)
			cancel()
			if err != nil {
				n.inboundFailed.Add(1)
				n.cfg.Log.Debug("usernet: guest refused a published connection", "port", guestPort, "err", err)
				hc.Close()
				return
			}
			n.inbound.Add(1)
			n.join(hc.(*net.TCPConn), gc)
		}()
	}
}

// outboundConn handles a guest's SYN to a port nobody listens on in the
// stack: connections to the gateway go to the host.
func (n *Network) outboundConn(r *tcp.ForwarderRequest) {
	id := r.ID()
	if id.LocalAddress != n.gw {
		r.Complete(true)
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var d net.Dialer
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		hc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(n.cfg.OutboundHost, strconv.Itoa(int(id.LocalPort))))
		cancel()
		if err != nil {
			n.cfg.Log.Debug("usernet: outbound connection refused on the host", "port", id.LocalPort, "err", err)
			r.Complete(true)
			return
		}
		var wq waiter.Queue
		ep, e := r.CreateEndpoint(&wq)
		if e != nil {
			r.Complete(true)
			hc.Close()
			return
		}
		r.Complete(false)
		n.outbound.Add(1)
		n.join(hc.(*net.TCPConn), gonet.NewTCPConn(&wq, ep))
	}()
}

type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// join copies between a host and a guest connection until both ways are
// done, then closes both.
func (n *Network) join(a, b halfCloser) {
	if !n.track(a) {
		a.Close()
		b.Close()
		return
	}
	n.track(b)
	defer func() {
		a.Close()
		b.Close()
		n.untrack(a)
		n.untrack(b)
	}()
	done := make(chan error, 2)
	one := func(dst, src halfCloser) {
		buf := make([]byte, copyBuffer)
		_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
		if err == nil {
			err = dst.CloseWrite() // EOF: pass the half-close on
		}
		done <- err
	}
	go one(a, b)
	go one(b, a)
	if err := <-done; err != nil {
		// One way failed (a reset): the other cannot finish cleanly.
		a.Close()
		b.Close()
	}
	<-done
}

// Close stops the listeners, the connections and the stack.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	conns := n.conns
	n.conns = map[io.Closer]struct{}{}
	n.mu.Unlock()
	n.cancel()
	for _, ln := range n.lns {
		ln.Close()
	}
	for c := range conns {
		c.Close()
	}
	n.ep.Close()
	n.wg.Wait()
	n.s.Close()
	n.s.Wait()
	return nil
}

// pureACK reports whether frame is an IPv4 TCP segment that only
// acknowledges: no payload and no flag but ACK. The guest needs those
// eventually (they free its retransmit queue and open its window) but not
// at once, so they need not wake it: the device may hold the interrupt
// for them (netdev.Device.Deliver).
func pureACK(frame []byte) bool {
	const eth = 14
	if len(frame) < eth+20+20 || frame[12] != 0x08 || frame[13] != 0x00 {
		return false
	}
	ip := frame[eth:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || ip[9] != 6 || len(ip) < ihl+20 {
		return false
	}
	if ip[6]&0x3f != 0 || ip[7] != 0 {
		return false // a fragment
	}
	total := int(ip[2])<<8 | int(ip[3])
	tcp := ip[ihl:]
	doff := int(tcp[12]>>4) * 4
	return total == ihl+doff && tcp[13] == 0x10
}
