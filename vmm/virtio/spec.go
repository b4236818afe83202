package virtio

// Constants of the virtio 1.x specification (OASIS virtio v1.2) that the
// transport and the device models share.

// MMIO register offsets (§4.2.2).
const (
	RegMagicValue        = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100

	MagicValue = 0x74726976 // "virt"
	Version    = 2          // virtio 1.x MMIO (1 is the legacy interface)
	VendorID   = 0x554d4d43 // "CMMU": ours, not a PCI vendor
)

// Device status bits (§2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
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
	FVersion1         = 1 << 32
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
