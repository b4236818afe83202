// Command netsvc is the image's network service: gVisor's TCP/IP stack in
// a Go runtime of its own, started by the kernel at the program's first
// socket call, serving the program's forwarded socket system calls
// (protocol in kernel/boot/netsvc.go, sockets in kernel/net).
//
// Interfaces: loopback (127.0.0.1/8) always; eth0 (virtio-net) when the
// monitor attached one, with the address the monitor's user-mode network
// expects.
//
// It runs only inside an image: its system calls beyond Linux's
// (boot.SysSvc*) exist only in our kernel.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	glog "gvisor.dev/gvisor/pkg/log"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/cumulusdb/cumulus/kernel/boot"
	knet "github.com/cumulusdb/cumulus/kernel/net"
)

const verbose = false

func main() {
	r, _, errno := syscall.RawSyscall(boot.SysSvcInfo, 0, 0, 0)
	if errno != 0 {
		fmt.Fprintln(os.Stderr, "netsvc: not inside a CumulusDB image")
		os.Exit(2)
	}
	shared := (*boot.SvcShared)(ptr(r))
	if !verbose {
		// gVisor reports dropped segments (a SYN racing a listener's
		// start, say) as warnings on stderr: they would land in the
		// program's output.
		glog.SetTarget(quiet{})
	}
	st, err := newStack()
	if err != nil {
		fmt.Fprintf(os.Stderr, "netsvc: %v\n", err)
		os.Exit(2)
	}
	if verbose {
		knet.Debug = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "netsvc: "+f+"\n", a...) }
	}
	svc := knet.NewService(st, func(id int, mask uint32) {
		if verbose {
			fmt.Fprintf(os.Stderr, "netsvc: ready %d %#x\n", id, mask)
		}
		syscall.RawSyscall(boot.SysSvcReady, uintptr(id), uintptr(mask), 0)
	})
	serve(shared, svc)
}

// serve takes requests off the ring in order and frames off eth0. Calls
// that cannot block run here, one after another; a call on a blocking
// socket gets a goroutine. When there is nothing to do, the stack's own
// goroutines get the processor first, then this goroutine waits in the
// runtime's netpoller on an eventfd that the kernel signals for the next
// request or the next received frame (SysSvcEvent). Waiting there, and
// not in a blocking system call, leaves the runtime idle as far as it can
// tell: timers fire from the poller's timeout, and sysmon sleeps instead
// of retaking the processor from a blocked thread every 20 µs (each a
// few guest context switches and a timer). The system calls on this
// path are raw, so they do not wake sysmon either.
func serve(sh *boot.SvcShared, svc *knet.Service) {
	ev, err := newEvent()
	if err != nil {
		fmt.Fprintf(os.Stderr, "netsvc: %v\n", err)
		os.Exit(2)
	}
	for {
		seq := atomic.LoadUint32(&sh.Seq)
		for head := atomic.LoadUint32(&sh.Head); head != atomic.LoadUint32(&sh.Tail); head++ {
			i := sh.Ring[head%boot.MaxThreads]
			atomic.StoreUint32(&sh.Head, head+1)
			slot := &sh.Slots[i]
			if knet.Blocks(slot) {
				go complete(svc, i, slot)
			} else {
				complete(svc, i, slot)
			}
		}
		if eth0 != nil && eth0.receive() > 0 {
			continue
		}
		runtime.Gosched()
		if atomic.LoadUint32(&sh.Seq) != seq {
			continue
		}
		if eth0 == nil {
			ev.wait(func() bool { return atomic.LoadUint32(&sh.Seq) != seq })
			continue
		}
		eth0.dev.ArmReceive()
		ev.wait(func() bool { return atomic.LoadUint32(&sh.Seq) != seq || eth0.dev.Pending() })
		eth0.dev.DisarmReceive()
	}
}

// event is the service's eventfd in the runtime's poller.
type event struct{ rc syscall.RawConn }

func newEvent() (*event, error) {
	const efdNonblock, efdCloexec = 0x800, 0x80000
	fd, _, errno := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, efdNonblock|efdCloexec, 0)
	if errno != 0 {
		return nil, fmt.Errorf("eventfd: %v", errno)
	}
	irq := uintptr(0)
	if eth0 != nil {
		irq = uintptr(eth0.idx) + 1
	}
	if _, _, errno := syscall.RawSyscall(boot.SysSvcEvent, fd, irq, 0); errno != 0 {
		return nil, fmt.Errorf("SysSvcEvent: %v", errno)
	}
	rc, err := os.NewFile(fd, "svc-event").SyscallConn()
	if err != nil {
		return nil, err
	}
	return &event{rc: rc}, nil
}

// wait returns once ready reports true, checking it now and after each
// signal of the eventfd, and parks the goroutine in the poller in
// between. The kernel signals after the change ready looks for, so none
// is missed; the counter is never read (no system call).
func (e *event) wait(ready func() bool) {
	e.rc.Read(func(uintptr) bool { return ready() })
}

// complete runs one request and wakes its caller. The kernel checked the
// caller's pointers, but a fault or a bug here must cost that one call
// (EFAULT), not the service and with it every socket of the program.
func complete(svc *knet.Service, i int32, slot *boot.SvcSlot) {
	r := int64(-14) // EFAULT
	func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if e := recover(); e != nil {
				fmt.Fprintf(os.Stderr, "netsvc: op %d on socket %d failed: %v\n", slot.Op, slot.Sock, e)
			}
		}()
		r = svc.Handle(slot)
	}()
	if verbose {
		fmt.Fprintf(os.Stderr, "netsvc: thread %d op %d sock %d flags %d args %x → %d\n", i, slot.Op, slot.Sock, slot.Flags, slot.Args, r)
	}
	syscall.RawSyscall(boot.SysSvcDone, uintptr(i), uintptr(r), 0)
}

func newStack() (*stack.Stack, error) {
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	// As the monitor's stack (vmm/usernet): SACK, and buffers that keep
	// the link's 64 KiB segments flowing while acknowledgements wait for
	// an exit.
	sack := tcpip.TCPSACKEnabled(true)
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	const linkBuffer = 4 << 20
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: linkBuffer, Max: 2 * linkBuffer}
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: linkBuffer, Max: 2 * linkBuffer}
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	if err := st.CreateNIC(1, loopback.New()); err != nil {
		return nil, fmt.Errorf("loopback: %v", err)
	}
	lo := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), PrefixLen: 8}}
	if err := st.AddProtocolAddress(1, lo, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("loopback address: %v", err)
	}
	routes := []tcpip.Route{{Destination: lo.AddressWithPrefix.Subnet(), NIC: 1}}
	nicRoutes, err := attachEth(st)
	if err != nil {
		return nil, err
	}
	st.SetRouteTable(append(routes, nicRoutes...))
	return st, nil
}

// quiet drops gVisor's log messages.
type quiet struct{}

func (quiet) Emit(int, glog.Level, time.Time, string, ...any) {}

func ptr(a uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&a)) }
