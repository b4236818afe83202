package vmm

import (
	"errors"

	"github.com/cumulusdb/cumulus/vmm/virtio"
)

func (m *machine) attachNet(mem virtio.Memory) error {
	return errors.New("vmm: virtio-net: not yet implemented")
}
