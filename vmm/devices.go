package vmm

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/virtio"
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
	// A vCPU spinning in its idle loop sees the bit by itself.
	for _, v := range m.cpus {
		if atomic.LoadUint64(m.pc64(v.id, boot.PCHalted)) == boot.IdleSpinning {
			return
		}
	}
	// Every vCPU is running: interrupt one, which takes a tick and looks.
	if len(m.cpus) > 0 {
		if tid := m.cpus[0].tid.Load(); tid != 0 {
			unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
		}
	}
}

// notify passes a virtqueue notification (HCNotify, a doorbell) to
// device i. Bad indices are the guest's mistake and ignored.
func (m *machine) notify(i int, q uint32) {
	if i < 0 || i >= len(m.devs) {
		return
	}
	if t, ok := m.devs[i].dev.(*virtio.Transport); ok {
		t.Notify(q)
	}
}

// doorbells delivers the notifications the guest rang as doorbells
// (BootInfo.Doorbell, see kernel/boot). It runs on vCPU threads at every
// exit, before the exit is handled (a halt then sleeps after the frames
// it carried went out).
func (m *machine) doorbells() {
	bi := (*boot.BootInfo)(unsafe.Pointer(&m.mem[boot.BootInfoAddr]))
	if atomic.LoadUint64(&bi.Doorbell) == 0 {
		return
	}
	pend := atomic.SwapUint64(&bi.Doorbell, 0)
	for i := 0; pend != 0 && i < boot.MaxDevices; i++ {
		if pend&(1<<uint(i)) == 0 {
			continue
		}
		pend &^= 1 << uint(i)
		qs := atomic.SwapUint32(&bi.DoorbellQueues[i], 0)
		for q := uint32(0); qs != 0; q++ {
			if qs&(1<<q) != 0 {
				qs &^= 1 << q
				m.notify(i, q)
			}
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

// vcpuProcs makes room in the Go scheduler for n vCPU threads. A vCPU
// spends its time in KVM_RUN, a system call during which its thread
// keeps its P until sysmon retakes it (20 µs to 10 ms later), so with
// GOMAXPROCS at the host's CPU count, running vCPUs would leave the
// device and network goroutines no P to run on exactly when the guest
// waits for them. The setting is raised, never lowered (several machines
// may run in one process).
func vcpuProcs(n int) {
	want := runtime.NumCPU() + n
	if runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}
