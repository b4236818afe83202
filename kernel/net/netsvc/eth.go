package main

// eth0: gVisor's stack on the virtio-net driver (kernel/dev/virtio/net).
//
// The stack writes packets into a channel endpoint wrapped by gVisor's
// Ethernet layer (which adds and parses the 14-byte header and answers
// ARP); a transmit goroutine drains it in batches, so that one device
// notification covers many frames. Received frames are taken off the
// device by the serve loop (main.go), which waits for requests and for
// the device's interrupt in one system call, and injected into the
// stack. Frames are copied once each way, between the driver's DMA slots
// and the stack's buffers.

import (
	"context"
	"fmt"
	"net/netip"
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
	dev, err := vnet.Open(info.Transport(), info.Interrupt(), dma, vnet.Config{})
	if err != nil {
		return nil, fmt.Errorf("eth0: %w", err)
	}
	mac := dev.MAC()
	ch := channel.New(1024, uint32(dev.MTU()+header.EthernetMinimumSize), tcpip.LinkAddress(mac[:]))
	if err := st.CreateNIC(ethNIC, ethernet.New(ch)); err != nil {
		return nil, fmt.Errorf("eth0: %v", err)
	}
	ip := netip.MustParseAddr(boot.GuestIP).As4()
	gw := netip.MustParseAddr(boot.GatewayIP).As4()
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(ip), PrefixLen: boot.NetPrefix}}
	if err := st.AddProtocolAddress(ethNIC, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("eth0 address: %v", err)
	}
	go transmit(ch, dev)
	eth0 = &nic{dev: dev, ch: ch, irq: info.Interrupt(), idx: info.IRQ}
	return []tcpip.Route{
		{Destination: pa.AddressWithPrefix.Subnet(), NIC: ethNIC},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw), NIC: ethNIC},
	}, nil
}

// transmit sends what the stack queued, a batch at a time.
func transmit(ch *channel.Endpoint, dev *vnet.Device) {
	ctx := context.Background()
	frames := make([][]byte, 0, 64)
	for {
		pkt := ch.ReadContext(ctx)
		if pkt == nil {
			return
		}
		frames = append(frames[:0], pkt.ToView().AsSlice())
		pkt.DecRef()
		for len(frames) < cap(frames) {
			p := ch.Read()
			if p == nil {
				break
			}
			frames = append(frames, p.ToView().AsSlice())
			p.DecRef()
		}
		for sent := 0; sent < len(frames); {
			n, err := dev.Send(frames[sent:])
			sent += n
			if err != nil || n == 0 {
				// The device holds every slot: give it a moment to
				// complete some.
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
}

// receive injects the frames the device has delivered and returns how
// many; it does not wait.
func (n *nic) receive() int {
	k, _ := n.dev.Receive(func(frame []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), frame...))})
		n.ch.InjectInbound(0, pkt)
		pkt.DecRef()
	})
	return k
}
