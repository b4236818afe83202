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
// goroutines get the processor first (with one P they would otherwise
// wait until sysmon retakes it from a thread blocked in a system call, 20
// µs to 10 ms), then this thread waits in the kernel for the next request
// or the next received frame, whichever comes first.
func serve(sh *boot.SvcShared, svc *knet.Service) {
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
			syscall.Syscall(boot.SysSvcWait, uintptr(seq), 0, 0)
			continue
		}
		eth0.dev.ArmReceive()
		seen := eth0.irq.Count()
		if !eth0.dev.Pending() {
			syscall.Syscall(boot.SysSvcWait, uintptr(seq), uintptr(eth0.idx)+1, uintptr(seen))
		}
		eth0.dev.DisarmReceive()
	}
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
