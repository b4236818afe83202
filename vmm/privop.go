package vmm

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm/kvm"
)

// The privop seam on PVM (DESIGN §1.3): the guest runs at CPL 3 and cannot
// execute privileged instructions, so the monitor runs them for it. A TLB
// flush is a two-instruction stub at CPL 0 (mov %cr3,%rax; mov %rax,%cr3;
// out): KVM treats the guest's own CR3 write as "sync the shadow page
// tables and flush", which KVM_SET_SREGS with an unchanged CR3 does not
// do. CPL 0 code is emulated under PVM (~1 µs an instruction): the stub is
// three instructions. The vCPU's registers are saved around it.
//
// Shootdown: the initiating vCPU asks every vCPU to flush, kicks them out
// of the guest, flushes itself and waits until all have done it. Each vCPU
// flushes on its own thread, between KVM_RUN calls (loop).

var flushStub = []byte{
	0x0f, 0x20, 0xd8, // mov %cr3, %rax
	0x0f, 0x22, 0xd8, // mov %rax, %cr3
	0xe6, boot.HCPrivopDone, // out %al, $done
}

func (m *machine) installPrivops() { copy(m.mem[boot.PrivopAddr:], flushStub) }

// flushTLB runs the flush stub on this vCPU (its own thread). PVM's
// emulator occasionally refuses the stub (KVM_EXIT_INTERNAL_ERROR) or
// raises an exception inside it (a page fault on the stub itself, seen
// about once in 2000 flushes): the vCPU's state is then put back and the
// stub tried again.
func (v *vcpu) flushTLB() error {
	var r kvm.Regs
	var s kvm.Sregs
	if err := v.c.GetRegs(&r); err != nil {
		return err
	}
	if err := v.c.GetSregs(&s); err != nil {
		return err
	}
	// An exception KVM is still delivering to the interrupted program (the
	// kick came in the middle of it) would otherwise be delivered into
	// the stub, at CPL 0 on the stub's stack, and be lost: set it aside
	// and put it back afterwards, after the registers (KVM_SET_REGS drops
	// a pending exception).
	var ev kvm.Events
	inFlight := v.c.GetEvents(&ev) == nil && ev.InFlight()
	if inFlight {
		quiet := ev
		quiet.ExceptionInjected, quiet.ExceptionPending, quiet.ExceptionHasErrorCode = 0, 0, 0
		quiet.ExceptionNr, quiet.ExceptionErrorCode = 0, 0
		quiet.InterruptInjected, quiet.InterruptNr, quiet.InterruptSoft = 0, 0, 0
		quiet.NMIInjected, quiet.NMIPending = 0, 0
		quiet.ExceptionHasPayload, quiet.ExceptionPayload = 0, 0
		if err := v.c.SetEvents(&quiet); err != nil {
			return err
		}
		v.m.flushEvents.Add(1)
	}
	// The stub runs on the top of this vCPU's IST stack, and an exception
	// inside it is pushed there too: keep whatever frame the interrupted
	// guest had in flight there (a fault entry caught before it copied
	// its frame out).
	top := v.m.istTop(v.id)
	var saved [256]byte
	copy(saved[:], v.m.mem[top-192:top+64])
	var err error
	for try := 0; try < 5; try++ {
		if err = v.runFlushStub(&r, &s); err == nil {
			break
		}
		v.m.flushRetries.Add(1)
		v.m.cfg.Log.Debug("vmm: TLB flush retried", "vcpu", v.id, "err", err)
	}
	copy(v.m.mem[top-192:top+64], saved[:])
	if serr := v.c.SetSregs(&s); serr != nil && err == nil {
		err = serr
	}
	if rerr := v.c.SetRegs(&r); rerr != nil && err == nil {
		err = rerr
	}
	if inFlight {
		if eerr := v.c.SetEvents(&ev); eerr != nil && err == nil {
			err = eerr
		}
	}
	return err
}

func (v *vcpu) runFlushStub(r *kvm.Regs, s *kvm.Sregs) error {
	ks := *s
	ks.CS = kvm.Segment{Selector: boot.SelKernelCode, Type: 11, Present: 1, DPL: 0, S: 1, L: 1, G: 1, Limit: 0xffffffff}
	ks.SS = kvm.Segment{Selector: boot.SelKernelData, Type: 3, Present: 1, DPL: 0, S: 1, DB: 1, G: 1, Limit: 0xffffffff}
	if err := v.c.SetSregs(&ks); err != nil {
		return err
	}
	kr := *r
	kr.RIP, kr.RSP, kr.RFLAGS = boot.PrivopAddr, v.m.istTop(v.id), 0x2
	if err := v.c.SetRegs(&kr); err != nil {
		return err
	}
	for i := 0; ; i++ {
		reason, err := v.c.Run()
		if err != nil {
			return err
		}
		if reason == kvm.ExitIO {
			switch io := v.c.IOExit(); io.Port {
			case boot.HCPrivopDone:
				v.m.flushes.Add(1)
				return nil
			case boot.HCPrivopFault:
				var vec uint32
				if len(io.Data) >= 4 {
					vec = binary.LittleEndian.Uint32(io.Data)
				}
				// Seen under PVM: the stub raises an exception into the
				// guest's IDT instead of running; the kernel's fault entry
				// hands it straight back (kernel/entry_amd64.s).
				return fmt.Errorf("vmm: TLB flush stub raised vector %d", vec)
			}
		}
		if reason != kvm.ExitIntr || i > 100 {
			return fmt.Errorf("vmm: TLB flush stub: unexpected exit %d", reason)
		}
	}
}

// shootdown flushes every vCPU's TLB and returns when all have.
func (v *vcpu) shootdown() error {
	m := v.m
	for _, o := range m.cpus {
		if o != v {
			o.wantFlush.Store(true)
		}
	}
	for _, o := range m.cpus {
		if o == v {
			continue
		}
		select { // a halted vCPU wakes up, flushes, and halts again
		case o.kick <- struct{}{}:
		default:
		}
		if tid := o.tid.Load(); tid != 0 {
			unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
		}
	}
	if err := v.flushTLB(); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, o := range m.cpus {
		for o != v && o.wantFlush.Load() {
			if m.stopped.Load() {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("vmm: vCPU %d did not flush its TLB", o.id)
			}
			// Another vCPU may be shooting down at the same time and
			// waiting for us: serve its request while we wait for ours.
			if err := v.serviceFlush(); err != nil {
				return err
			}
			// A vCPU between exits may miss one signal: repeat it.
			if tid := o.tid.Load(); tid != 0 {
				unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	return nil
}

// serviceFlush runs on a vCPU's thread before it re-enters the guest.
func (v *vcpu) serviceFlush() error {
	if v.wantFlush.Load() {
		if err := v.flushTLB(); err != nil {
			return err
		}
		v.wantFlush.Store(false)
	}
	return nil
}
