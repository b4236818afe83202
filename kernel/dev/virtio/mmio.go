package virtio

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// MMIO is the Transport of a virtio-mmio register window mapped at Base
// (in the image, boot.Device.MMIO: identity-mapped, backed by no memory,
// so each access is a VM exit the monitor emulates). Every access is one
// MOV of the register's width, written in assembly (mmio_amd64.s): the
// compiler can neither elide nor merge it, and a store is not the XCHG
// that sync/atomic's Store compiles to, which an emulator would turn into
// a read and a write (two exits, and a read of a write-only register).
//
// When the monitor offers them (boot.FlagDoorbell, Fast), notifications
// take its cheaper paths: a QueueNotify write becomes the HCNotify
// hypercall (an OUT: about half the cost of the MMIO exit under PVM), and
// Ring sets the device's doorbell bits in the boot page, which cost
// nothing until the kernel delivers them with an exit it makes anyway.
type MMIO struct {
	Base  uintptr
	Index int  // the device's index in the boot page (its doorbell)
	Fast  bool // HCNotify and doorbells are available
}

func (m MMIO) Read32(off uint32) uint32 { return mmioRead32(m.Base + uintptr(off)) }
func (m MMIO) Write32(off uint32, v uint32) {
	if off == RegQueueNotify && m.Fast {
		hypercall(boot.HCNotify, uint32(m.Index)<<16|v&0xffff)
		return
	}
	mmioWrite32(m.Base+uintptr(off), v)
}
func (m MMIO) Read16(off uint32) uint16 { return mmioRead16(m.Base + uintptr(off)) }
func (m MMIO) Read8(off uint32) uint8   { return mmioRead8(m.Base + uintptr(off)) }

// Ring implements Doorbell.
func (m MMIO) Ring(queue uint16) bool {
	if !m.Fast || queue >= 32 {
		return false
	}
	bi := bootInfo()
	atomic.OrUint32(&bi.DoorbellQueues[m.Index], 1<<queue)
	atomic.OrUint64(&bi.Doorbell, 1<<uint(m.Index))
	return true
}

// Implemented in mmio_amd64.s.
func mmioRead32(addr uintptr) uint32
func mmioWrite32(addr uintptr, v uint32)
func mmioRead16(addr uintptr) uint16
func mmioRead8(addr uintptr) uint8
func hypercall(port uint16, arg uint32)

// DeviceInfo is one device the monitor attached, from the boot page.
type DeviceInfo struct {
	ID   uint32 // boot.VirtioNet, boot.VirtioBlock
	IRQ  uint32
	MMIO uint64
	Name string // "vda", "eth0"
}

// bootInfo returns the boot-information page. Only valid in the image.
func bootInfo() *boot.BootInfo {
	a := uintptr(boot.BootInfoAddr)
	return (*boot.BootInfo)(*(*unsafe.Pointer)(unsafe.Pointer(&a)))
}

// Devices lists the devices in the boot page. Only call it inside a
// CumulusDB image (kapi/unikernel.Probe): elsewhere the page does not
// exist and the read faults.
func Devices() ([]DeviceInfo, error) {
	bi := bootInfo()
	if bi.Magic != boot.Magic {
		return nil, fmt.Errorf("virtio: no boot-information page: %w", syscall.ENODEV)
	}
	n := min(int(bi.NumDevices), boot.MaxDevices)
	out := make([]DeviceInfo, 0, n)
	for i := 0; i < n; i++ {
		d := bi.Devices[i]
		name := d.Name[:]
		for j, c := range name {
			if c == 0 {
				name = name[:j]
				break
			}
		}
		out = append(out, DeviceInfo{ID: d.ID, IRQ: d.IRQ, MMIO: d.MMIO, Name: string(name)})
	}
	return out, nil
}

// Find returns the attached device with the given name ("vda", "eth0").
func Find(name string) (DeviceInfo, error) {
	devs, err := Devices()
	if err != nil {
		return DeviceInfo{}, err
	}
	for _, d := range devs {
		if d.Name == name {
			return d, nil
		}
	}
	return DeviceInfo{}, fmt.Errorf("virtio: no device %q: %w", name, syscall.ENODEV)
}

// Transport returns the device's register window.
func (d DeviceInfo) Transport() Transport {
	idx := int((d.MMIO - boot.MMIOBase) / boot.MMIOStride)
	fast := bootInfo().Flags&boot.FlagDoorbell != 0 && idx >= 0 && idx < boot.MaxDevices
	return MMIO{Base: uintptr(d.MMIO), Index: idx, Fast: fast}
}

// Interrupt returns the device's interrupt counter in the boot page.
func (d DeviceInfo) Interrupt() Interrupt {
	if d.IRQ >= boot.MaxDevices {
		return nil
	}
	return NewFutexIRQ(&bootInfo().IRQCount[d.IRQ])
}

// RAMSize returns the end of the direct map (for Direct). Image only.
func RAMSize() uint64 { return bootInfo().RAMSize }
