package vmm

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/usernet"
	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/blk"
)

// Disk is a host file attached as a virtio block device. Disks appear in
// the guest in Config order as vda, vdb, …
type Disk struct {
	Path     string
	Size     int64 // create the file with this size if it does not exist (0: it must exist)
	ReadOnly bool
}

// PortForward publishes a guest TCP port on the host (cumulus run -p).
type PortForward struct {
	HostAddr  string // host address to listen on ("" = all interfaces)
	HostPort  int
	GuestPort int
}

// DeviceStats are one device's counts for a run.
type DeviceStats struct {
	Name string
	virtio.Stats
	Net *usernet.Stats `json:",omitempty"` // eth0: the user-mode network behind it
}

// attachDevices creates the devices Config asks for (virtio block and
// network, see devices.go) in a fixed order, so that their names and
// windows are the same at every boot.
//
// Each device model (vmm/virtio/...) sits behind a virtio.Transport,
// which is the mmioDevice of its window; its interrupt is m.raiseIRQ of
// the window's index. A device that fails to open stops the boot; those
// already attached are closed with the machine.
func (m *machine) attachDevices() error {
	mem := virtio.NewMemory(m.mem[:m.cfg.MemBytes])
	for i, d := range m.cfg.Disks {
		if i >= 26 {
			return fmt.Errorf("vmm: more than 26 disks")
		}
		name := "vd" + string(rune('a'+i))
		dev, err := blk.Open(blk.Config{Path: d.Path, Size: d.Size, ReadOnly: d.ReadOnly, Log: m.cfg.Log.With("device", name)})
		if err != nil {
			return fmt.Errorf("vmm: disk %s (%s): %w", name, d.Path, err)
		}
		if err := m.attachVirtio(boot.VirtioBlock, name, dev, mem); err != nil {
			dev.Close()
			return err
		}
	}
	if m.cfg.Net || len(m.cfg.Ports) > 0 {
		if err := m.attachNet(mem); err != nil {
			return err
		}
	}
	return nil
}

// attachVirtio puts dev behind a virtio-mmio transport in the next
// window.
func (m *machine) attachVirtio(id uint32, name string, dev virtio.Device, mem virtio.Memory) error {
	irq := -1
	t := virtio.NewTransport(dev, mem, func() { m.raiseIRQ(irq) }, m.cfg.Log.With("device", name))
	i, err := m.attach(id, name, t)
	if err != nil {
		return err
	}
	irq = i
	return nil
}

// deviceStats collects every device's counts (for Stats).
func (m *machine) deviceStats() []DeviceStats {
	var out []DeviceStats
	for _, d := range m.devs {
		if t, ok := d.dev.(*virtio.Transport); ok {
			out = append(out, DeviceStats{Name: d.name, Stats: t.Stats(), Net: netStats(t.Device())})
		}
	}
	return out
}

// ParsePortForward reads cumulus run -p: [HOSTADDR:]HOSTPORT:GUESTPORT
// (an IPv6 HOSTADDR in brackets).
func ParsePortForward(s string) (PortForward, error) {
	bad := func() (PortForward, error) {
		return PortForward{}, fmt.Errorf("bad port forward %q (want [HOSTADDR:]HOSTPORT:GUESTPORT)", s)
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return bad()
	}
	guest, err := strconv.Atoi(s[i+1:])
	if err != nil || guest < 1 || guest > 65535 {
		return bad()
	}
	hostPart := s[:i]
	var addr, port string
	if strings.ContainsRune(hostPart, ':') {
		if addr, port, err = net.SplitHostPort(hostPart); err != nil {
			return bad()
		}
	} else {
		port = hostPart
	}
	host, err := strconv.Atoi(port)
	if err != nil || host < 0 || host > 65535 {
		return bad()
	}
	return PortForward{HostAddr: addr, HostPort: host, GuestPort: guest}, nil
}

// ParseDisk reads cumulus run -disk: PATH[:ro]. size is the size of the
// file if it must be created.
func ParseDisk(s string, size int64) (Disk, error) {
	d := Disk{Path: s, Size: size}
	if p, ok := strings.CutSuffix(s, ":ro"); ok {
		d.Path, d.ReadOnly, d.Size = p, true, 0
	}
	if d.Path == "" {
		return Disk{}, fmt.Errorf("bad disk %q (want PATH[:ro])", s)
	}
	return d, nil
}
