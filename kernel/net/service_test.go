package net

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

func newLoopback(t *testing.T) *stack.Stack {
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := st.CreateNIC(1, loopback.New()); err != nil {
		t.Fatal(err)
	}
	a := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), PrefixLen: 8}}
	if err := st.AddProtocolAddress(1, a, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	st.SetRouteTable([]tcpip.Route{{Destination: a.AddressWithPrefix.Subnet(), NIC: 1}})
	return st
}

// readiness is what the kernel would know: the last mask reported.
type readiness struct {
	mu sync.Mutex
	m  map[int]uint32
}

func (r *readiness) set(id int, mask uint32) { r.mu.Lock(); r.m[id] = mask; r.mu.Unlock() }
func (r *readiness) get(id int) uint32       { r.mu.Lock(); defer r.mu.Unlock(); return r.m[id] }

func addr(a uintptr) uint64 { return uint64(a) }

const (
	epollIn  = 0x1
	epollOut = 0x4
)

func sockaddr(port uint16) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint16(b, 2)
	binary.BigEndian.PutUint16(b[2:], port)
	copy(b[4:], []byte{127, 0, 0, 1})
	return b
}

func call(v *Service, op uint32, sock uint64, flags uint32, args ...uint64) int64 {
	s := &boot.SvcSlot{Op: op, Sock: sock, Flags: flags}
	copy(s.Args[:], args)
	return v.Handle(s)
}

// TestStream runs the calls Go's net package makes for a listener and a
// non-blocking client, as the kernel forwards them.
func TestStream(t *testing.T) {
	rd := &readiness{m: map[int]uint32{}}
	v := NewService(newLoopback(t), rd.set)
	const nb = boot.SvcNonblock
	if r := call(v, boot.SvcSocket, 1, 0, 2, 1, 0); r != 0 {
		t.Fatalf("socket: %d", r)
	}
	sa := sockaddr(7777)
	if r := call(v, boot.SvcBind, 1, nb, addr(uintptr(unsafe.Pointer(&sa[0]))), 16); r != 0 {
		t.Fatalf("bind: %d", r)
	}
	if r := call(v, boot.SvcListen, 1, nb, 128); r != 0 {
		t.Fatalf("listen: %d", r)
	}
	if r := call(v, boot.SvcAccept, 1, nb, 0, 0, 0, 3); r != -eAGAIN {
		t.Fatalf("accept with nothing pending: %d, want EAGAIN", r)
	}
	call(v, boot.SvcSocket, 2, 0, 2, 1, 0)
	if r := call(v, boot.SvcConnect, 2, nb, addr(uintptr(unsafe.Pointer(&sa[0]))), 16); r != -eINPROGRESS && r != 0 {
		t.Fatalf("connect: %d", r)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rd.get(2)&epollOut == 0 || rd.get(1)&epollIn == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("readiness: client %#x, listener %#x", rd.get(2), rd.get(1))
		}
		time.Sleep(time.Millisecond)
	}
	var soerr int32
	l := uint32(4)
	if r := call(v, boot.SvcGetsockopt, 2, nb, 1, 4, addr(uintptr(unsafe.Pointer(&soerr))), addr(uintptr(unsafe.Pointer(&l)))); r != 0 || soerr != 0 {
		t.Fatalf("SO_ERROR: %d, %d", r, soerr)
	}
	peer := make([]byte, 16)
	pl := uint32(16)
	if r := call(v, boot.SvcAccept, 1, nb, addr(uintptr(unsafe.Pointer(&peer[0]))), addr(uintptr(unsafe.Pointer(&pl))), 0, 3); r != 0 {
		t.Fatalf("accept: %d", r)
	}
	if rd.get(3)&epollOut == 0 {
		t.Fatalf("accepted socket not writable: %#x", rd.get(3))
	}
	if r := call(v, boot.SvcRead, 3, nb|boot.SvcFlat, addr(uintptr(unsafe.Pointer(&peer[0]))), 16); r != -eAGAIN {
		t.Fatalf("read with nothing sent: %d, want EAGAIN", r)
	}
	msg := []byte("hello")
	if r := call(v, boot.SvcWrite, 2, nb|boot.SvcFlat, addr(uintptr(unsafe.Pointer(&msg[0]))), 5); r != 5 {
		t.Fatalf("write: %d", r)
	}
	for rd.get(3)&epollIn == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("server never readable: %#x", rd.get(3))
		}
		time.Sleep(time.Millisecond)
	}
	buf := make([]byte, 64)
	if r := call(v, boot.SvcRead, 3, nb|boot.SvcFlat, addr(uintptr(unsafe.Pointer(&buf[0]))), 64); r != 5 || string(buf[:5]) != "hello" {
		t.Fatalf("server read: %d %q", r, buf[:5])
	}
	if r := call(v, boot.SvcWrite, 3, nb|boot.SvcFlat, addr(uintptr(unsafe.Pointer(&buf[0]))), 5); r != 5 {
		t.Fatalf("server write: %d", r)
	}
	for rd.get(2)&epollIn == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("client never readable: %#x", rd.get(2))
		}
		time.Sleep(time.Millisecond)
	}
	if r := call(v, boot.SvcRead, 2, nb|boot.SvcFlat, addr(uintptr(unsafe.Pointer(&buf[0]))), 64); r != 5 {
		t.Fatalf("client read: %d", r)
	}
	// Half-close: the server sees EOF, then closes; the client sees EOF.
	call(v, boot.SvcShutdown, 2, nb, 1)
	if r := call(v, boot.SvcRead, 3, boot.SvcFlat, addr(uintptr(unsafe.Pointer(&buf[0]))), 64); r != 0 {
		t.Fatalf("read after peer's shutdown: %d, want 0 (EOF)", r)
	}
	call(v, boot.SvcClose, 3, 0)
	if r := call(v, boot.SvcRead, 2, boot.SvcFlat, addr(uintptr(unsafe.Pointer(&buf[0]))), 64); r != 0 {
		t.Fatalf("client read after close: %d, want 0", r)
	}
	if r := call(v, boot.SvcRead, 99, boot.SvcFlat, 0, 0); r != -eBADF {
		t.Fatalf("unknown socket: %d", r)
	}
}

// TestConnectRefused: a blocking connect to a closed port fails with
// ECONNREFUSED.
func TestConnectRefused(t *testing.T) {
	v := NewService(newLoopback(t), nil)
	call(v, boot.SvcSocket, 1, 0, 2, 1, 0)
	sa := sockaddr(1)
	if r := call(v, boot.SvcConnect, 1, 0, addr(uintptr(unsafe.Pointer(&sa[0]))), 16); r != -eCONNREFUSED {
		t.Fatalf("connect: %d, want ECONNREFUSED", r)
	}
	if r := call(v, boot.SvcSocket, 2, 0, 10, 1, 0); r != -eAFNOSUPPORT {
		t.Fatalf("AF_INET6: %d", r)
	}
}
