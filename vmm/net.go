package vmm

import (
	"fmt"
	"net"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/usernet"
	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/netdev"
)

// The guest's network device, eth0: a virtio-net device model
// (vmm/virtio/netdev) plugged into the monitor's user-mode network
// (vmm/usernet), which is the gateway boot.GatewayIP of the guest's
// boot.GuestIP, publishes the guest ports of Config.Ports on the host and
// forwards guest connections to the gateway to the host's loopback. The
// network lives as long as the device: closing one closes the other.

// netDevice is the virtio-net device with the network behind it.
type netDevice struct {
	*netdev.Device
	net *usernet.Network
}

func (d *netDevice) Close() error {
	err := d.Device.Close()
	if e := d.net.Close(); e != nil && err == nil {
		err = fmt.Errorf("virtio-net: %w", e)
	}
	return err
}

func (m *machine) attachNet(mem virtio.Memory) error {
	mac, err := net.ParseMAC(boot.GuestMAC)
	if err != nil {
		return fmt.Errorf("vmm: virtio-net: %w", err)
	}
	log := m.cfg.Log.With("device", "eth0")
	dev, err := netdev.New(mac, boot.NetMTU, log)
	if err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	cfg := usernet.Config{Outbound: true, Log: log}
	for _, p := range m.cfg.Ports {
		cfg.Forwards = append(cfg.Forwards, usernet.Forward{HostAddr: p.HostAddr, HostPort: p.HostPort, GuestPort: p.GuestPort})
	}
	n, err := usernet.New(cfg, dev.Deliver)
	if err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	dev.SetBackend(n)
	for i, ln := range n.Listeners() {
		log.Info("vmm: guest port published", "guest_port", m.cfg.Ports[i].GuestPort, "host", ln.Addr().String())
	}
	nd := &netDevice{Device: dev, net: n}
	if err := m.attachVirtio(boot.VirtioNet, "eth0", nd, mem); err != nil {
		nd.Close()
		return err
	}
	return nil
}

// netStats returns the user-mode network's counts if dev is eth0.
func netStats(dev virtio.Device) *usernet.Stats {
	if nd, ok := dev.(*netDevice); ok {
		s := nd.net.Stats()
		return &s
	}
	return nil
}
