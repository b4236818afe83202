package vmm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// Devices are virtio 1.x over MMIO (kernel/boot describes the guest's
// view). Each attached device owns one register window of MMIOStride
// bytes at MMIOBase + i*MMIOStride; the windows are mapped in the guest's
// page tables but backed by no memory slot, so every register access is a
// KVM_EXIT_MMIO that the vCPU's thread hands to the device model here.
// Queues live in guest RAM and are read and written by the device's own
// goroutines, never on a vCPU thread's hot path.
//
// Interrupts: a device raises one by incrementing its IRQCount word in
// the boot-information page and setting its IRQPending bit; the guest
// kernel notices the bit when it schedules, idles or takes a tick, and
// wakes the futex waiters on the count. raiseIRQ makes sure some vCPU
// looks soon: it wakes a halted one, or else interrupts a running one.

// mmioDevice is a device model behind one register window. MMIORead and
// MMIOWrite run on vCPU threads, possibly several at once.
type mmioDevice interface {
	MMIORead(off uint64, data []byte)
	MMIOWrite(off uint64, data []byte)
	// Close stops the device's goroutines and releases host resources
	// (flushing what must be durable). It runs once, after every vCPU
	// stopped.
	Close() error
}

// attached is one device in the machine.
type attached struct {
	id   uint32 // virtio device ID (boot.VirtioNet, boot.VirtioBlock)
	name string // "vda", "eth0"
	dev  mmioDevice
}

// attach adds a device and returns its index (its IRQ and window). It
// must run before the boot-information page is written.
func (m *machine) attach(id uint32, name string, dev mmioDevice) (int, error) {
	if len(m.devs) >= boot.MaxDevices {
		return 0, fmt.Errorf("vmm: more than %d devices", boot.MaxDevices)
	}
	m.devs = append(m.devs, attached{id: id, name: name, dev: dev})
	return len(m.devs) - 1, nil
}

// describeDevices fills the device table of the boot information.
func (m *machine) describeDevices(bi *boot.BootInfo) {
	bi.NumDevices = uint64(len(m.devs))
	for i, d := range m.devs {
		bi.Devices[i] = boot.Device{ID: d.id, IRQ: uint32(i), MMIO: boot.MMIOBase + uint64(i)*boot.MMIOStride}
		copy(bi.Devices[i].Name[:len(bi.Devices[i].Name)-1], d.name)
	}
}

// mapDevices maps the register windows' GiB with one 2 MiB page (no
// memory behind it: accesses exit). Uncached, as device memory is.
func (m *machine) mapDevices() {
	const pcd, pwt = 0x10, 0x8
	m.put64(boot.PDPTAddr+8*(boot.MMIOBase>>30), boot.MMIOPDAddr|ptFlag)
	m.put64(boot.MMIOPDAddr, boot.MMIOBase|ptFlag|ptPS|pcd|pwt)
}

// mmioExit dispatches a register access. An access outside every window
// is the guest's bug: it is reported like a fault and the VM stops.
func (v *vcpu) mmioExit(addr uint64, data []byte, write bool) bool {
	m := v.m
	m.mmioExits.Add(1)
	if addr < boot.MMIOBase {
		return false
	}
	i := (addr - boot.MMIOBase) / boot.MMIOStride
	if i >= uint64(len(m.devs)) {
		return false
	}
	off := (addr - boot.MMIOBase) % boot.MMIOStride
	if write {
		m.devs[i].dev.MMIOWrite(off, data)
	} else {
		m.devs[i].dev.MMIORead(off, data)
	}
	return true
}

// raiseIRQ signals device i's interrupt to the guest. Safe from any
// goroutine.
func (m *machine) raiseIRQ(i int) {
	bi := (*boot.BootInfo)(unsafe.Pointer(&m.mem[boot.BootInfoAddr]))
	atomic.AddUint32(&bi.IRQCount[i], 1)
	if atomic.LoadUint64(&bi.IRQPending)&(1<<uint(i)) != 0 {
		return // the kernel has yet to see the previous one: it will wake all waiters
	}
	orUint64(&bi.IRQPending, 1<<uint(i))
	m.irqs.Add(1)
	for _, v := range m.cpus {
		if v.halted.Load() {
			select {
			case v.kick <- struct{}{}:
				return
			default:
			}
		}
	}
	// Every vCPU is running (or spinning in its idle loop, where it sees
	// the bit by itself): interrupt one, which takes a tick and looks.
	if len(m.cpus) > 0 {
		if tid := m.cpus[0].tid.Load(); tid != 0 {
			unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
		}
	}
}

func orUint64(p *uint64, bits uint64) {
	for {
		old := atomic.LoadUint64(p)
		if atomic.CompareAndSwapUint64(p, old, old|bits) {
			return
		}
	}
}

// closeDevices closes every device, returning the first error.
func (m *machine) closeDevices() error {
	var first error
	for _, d := range m.devs {
		if err := d.dev.Close(); err != nil && first == nil {
			first = fmt.Errorf("vmm: %s: %w", d.name, err)
		}
	}
	m.devs = nil
	return first
}
