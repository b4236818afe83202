package virtio

// Constants of the virtio 1.x specification (OASIS virtio v1.2) that the
// transport and the device models share. Those the guest driver needs too
// take their values from it (kernel/dev/virtio), so that the two sides of
// the contract cannot drift apart.

import drv "github.com/cumulusdb/cumulus/kernel/dev/virtio"

// MMIO register offsets (§4.2.2).
const (
	RegMagicValue        = drv.RegMagic
	RegVersion           = drv.RegVersion
	RegDeviceID          = drv.RegDeviceID
	RegVendorID          = drv.RegVendorID
	RegDeviceFeatures    = drv.RegDeviceFeatures
	RegDeviceFeaturesSel = drv.RegDeviceFeaturesSel
	RegDriverFeatures    = drv.RegDriverFeatures
	RegDriverFeaturesSel = drv.RegDriverFeaturesSel
	RegQueueSel          = drv.RegQueueSel
	RegQueueNumMax       = drv.RegQueueNumMax
	RegQueueNum          = drv.RegQueueNum
	RegQueueReady        = drv.RegQueueReady
	RegQueueNotify       = drv.RegQueueNotify
	RegInterruptStatus   = drv.RegInterruptStatus
	RegInterruptACK      = drv.RegInterruptACK
	RegStatus            = drv.RegStatus
	RegQueueDescLow      = drv.RegQueueDescLow
	RegQueueDescHigh     = drv.RegQueueDescHigh
	RegQueueDriverLow    = drv.RegQueueDriverLow
	RegQueueDriverHigh   = drv.RegQueueDriverHigh
	RegQueueDeviceLow    = drv.RegQueueDeviceLow
	RegQueueDeviceHigh   = drv.RegQueueDeviceHigh
	RegConfigGeneration  = drv.RegConfigGeneration
	RegConfig            = drv.RegConfig

	MagicValue = drv.MagicValue // "virt"
	Version    = 2              // virtio 1.x MMIO (1 is the legacy interface)
	VendorID   = 0x554d4d43     // "CMMU": ours, not a PCI vendor
)

// Device status bits (§2.1).
const (
	StatusAcknowledge      = drv.StatusAcknowledge
	StatusDriver           = drv.StatusDriver
	StatusDriverOK         = drv.StatusDriverOK
	StatusFeaturesOK       = drv.StatusFeaturesOK
	StatusDeviceNeedsReset = drv.StatusDeviceNeedsReset
	StatusFailed           = drv.StatusFailed
)

// InterruptStatus bits (§4.2.2).
const (
	InterruptUsedBuffer   = 1
	InterruptConfigChange = 2
)

// Device-independent feature bits (§6).
const (
	FRingIndirectDesc = 1 << 28
	FRingEventIdx     = 1 << 29
	FVersion1         = drv.FVersion1
)

// Split virtqueue layout (§2.7).
const (
	DescSize = 16 // addr u64, len u32, flags u16, next u16

	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4

	// avail ring: flags u16, idx u16, ring[num] u16, used_event u16
	AvailFNoInterrupt = 1
	// used ring: flags u16, idx u16, ring[num] {id u32, len u32}, avail_event u16
	UsedFNoNotify = 1

	MaxQueueSize = 32768
)

// AvailSize and UsedSize are the bytes of the rings of a queue of n
// entries (event index fields included).
func AvailSize(n uint16) uint64 { return 6 + 2*uint64(n) }
func UsedSize(n uint16) uint64  { return 6 + 8*uint64(n) }
