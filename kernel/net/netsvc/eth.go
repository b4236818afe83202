package main

// eth0: gVisor's stack on the virtio-net driver (kernel/dev/virtio/net).
//
// The stack writes packets into a channel endpoint wrapped by gVisor's
// Ethernet layer (which adds and parses the 14-byte header and answers
// ARP). The goroutine that wrote a packet drains the endpoint into the
// transmit ring at once (the endpoint's write notification), without a
// hand-off to another goroutine. The ring's notifications are lazy
// (LazyTx): they ring the device's doorbell, which the kernel delivers
// with its next exit, so the ACK for a request and the response that
// follows usually reach the monitor together, when the vCPU goes idle.
// Only a full ring is notified at once; frames that still do not fit
// wait for the transmit goroutine. Received frames are taken off the
// device by the serve loop (main.go), which waits for requests and for
// the device's interrupt in one system call, and injected into the
// stack. Frames are copied once each way, between the driver's DMA slots
// and the stack's buffers.

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/cumulusdb/cumulus/kapi/unikernel"
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/dev/virtio"
	vnet "github.com/cumulusdb/cumulus/kernel/dev/virtio/net"
)

const ethNIC = 2

// nic is eth0, or nil.
type nic struct {
	dev *vnet.Device
	ch  *channel.Endpoint
	irq virtio.Interrupt
	idx uint32 // device index (its interrupt)
}

var eth0 *nic

// attachEth puts eth0 on the stack when the monitor attached one and
// returns its routes (its subnet, and the default route via the gateway).
func attachEth(st *stack.Stack) ([]tcpip.Route, error) {
	if !unikernel.Probe() {
		return nil, nil // a Linux test of the stack
	}
	info, err := virtio.Find("eth0")
	if err != nil {
		return nil, nil // no network device: loopback only
	}
	dma := virtio.Direct{Frames: unikernel.Kernel{}, RAMSize: virtio.RAMSize()}
	dev, err := vnet.Open(info.Transport(), info.Interrupt(), dma, vnet.Config{LazyTx: true})
	if err != nil {
		return nil, fmt.Errorf("eth0: %w", err)
	}
	mac := dev.MAC()
	ch := channel.New(1024, uint32(dev.MTU()+header.EthernetMinimumSize), tcpip.LinkAddress(mac[:]))
	// The link is memory between two software stacks: with the device's
	// agreement, transport checksums are neither computed nor verified.
	if tx, rx := dev.ChecksumOffload(); tx || rx {
		if tx {
			ch.LinkEPCapabilities |= stack.CapabilityTXChecksumOffload
		}
		if rx {
			ch.LinkEPCapabilities |= stack.CapabilityRXChecksumOffload
		}
	}
	if err := st.CreateNIC(ethNIC, ethernet.New(ch)); err != nil {
		return nil, fmt.Errorf("eth0: %v", err)
	}
	ip := netip.MustParseAddr(boot.GuestIP).As4()
	gw := netip.MustParseAddr(boot.GatewayIP).As4()
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(ip), PrefixLen: boot.NetPrefix}}
	if err := st.AddProtocolAddress(ethNIC, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("eth0 address: %v", err)
	}
	tx := &txPath{ch: ch, dev: dev, wake: make(chan struct{}, 1)}
	ch.AddNotify(tx)
	go tx.retry()
	eth0 = &nic{dev: dev, ch: ch, irq: info.Interrupt(), idx: info.IRQ}
	return []tcpip.Route{
		{Destination: pa.AddressWithPrefix.Subnet(), NIC: ethNIC},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw), NIC: ethNIC},
	}, nil
}

// txPath moves the stack's outgoing packets into the transmit ring.
type txPath struct {
	ch   *channel.Endpoint
	dev  *vnet.Device
	wake chan struct{} // frames are left for retry

	mu     sync.Mutex
	frames [][]byte // batch being sent; what the ring did not take stays
	left   int      // frames[:left] wait for retry
}

// WriteNotify implements channel.Notification: the goroutine that queued
// a packet sends everything queued, unless earlier frames still wait for
// room (the retry goroutine then sends them first, in order).
func (t *txPath) WriteNotify() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.left == 0 {
		t.sendLocked()
	}
}

// sendLocked drains the endpoint in batches. If the ring fills, the
// frames not taken are kept (copied) and the retry goroutine woken.
func (t *txPath) sendLocked() {
	for {
		batch := t.frames[:0]
		for len(batch) < 64 {
			p := t.ch.Read()
			if p == nil {
				break
			}
			batch = append(batch, p.ToView().AsSlice())
			p.DecRef()
		}
		t.frames = batch
		if len(batch) == 0 {
			return
		}
		n, err := t.dev.Send(batch)
		if err != nil && n < len(batch) {
			n++ // a malformed frame is dropped, the rest go on
		}
		if n < len(batch) {
			t.left = copy(t.frames, batch[n:])
			select {
			case t.wake <- struct{}{}:
			default:
			}
			return
		}
	}
}

// retry sends frames the ring had no room for, then what the stack
// queued meanwhile.
func (t *txPath) retry() {
	for range t.wake {
		for {
			t.mu.Lock()
			n, err := t.dev.Send(t.frames[:t.left])
			if err != nil && n < t.left {
				n++
			}
			t.left = copy(t.frames, t.frames[n:t.left])
			if t.left == 0 {
				t.sendLocked()
			}
			done := t.left == 0
			t.mu.Unlock()
			if done {
				break
			}
			// The device holds every slot: give it a moment.
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// receive injects the frames the device has delivered and returns how
// many; it does not wait.
func (n *nic) receive() int {
	k, _ := n.dev.Receive(func(frame []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(buffer.NewViewWithData(frame))})
		n.ch.InjectInbound(0, pkt)
		pkt.DecRef()
	})
	return k
}
