// Package net is the network service's socket layer: it performs the
// program's forwarded socket system calls (kernel/boot/netsvc.go) on
// gVisor's TCP/IP stack and reports each socket's readiness back to the
// kernel. It runs in the service's own Go runtime (kernel/net/netsvc), so
// unlike the trap-context kernel it may allocate, block and use
// goroutines.
//
// Buffers and addresses in requests are the calling program's: the
// address space is shared and the caller stays blocked until the request
// completes, so they are read and written in place (one copy, between the
// program's buffer and the stack's).
//
// On Linux the package is tested directly: requests then point into the
// test's own memory.
package net

import (
	"encoding/binary"
	"io"
	"sync"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// Linux errno values returned (negated) as results.
const (
	ePERM         = 1
	eINTR         = 4
	eAGAIN        = 11
	eNOMEM        = 12
	eFAULT        = 14
	eBUSY         = 16
	eINVAL        = 22
	ePIPE         = 32
	eMSGSIZE      = 90
	ePROTOTYPE    = 91
	eNOPROTOOPT   = 92
	ePROTONOSUPP  = 93
	eOPNOTSUPP    = 95
	eAFNOSUPPORT  = 97
	eADDRINUSE    = 98
	eADDRNOTAVAIL = 99
	eNETUNREACH   = 101
	eCONNABORTED  = 103
	eCONNRESET    = 104
	eNOBUFS       = 105
	eISCONN       = 106
	eNOTCONN      = 107
	eTIMEDOUT     = 110
	eCONNREFUSED  = 111
	eHOSTUNREACH  = 113
	eALREADY      = 114
	eINPROGRESS   = 115
	eBADF         = 9
)

const allEvents = waiter.EventIn | waiter.EventOut | waiter.EventErr | waiter.EventHUp | waiter.EventRdHUp

// Debug, when set, receives diagnostics.
var Debug func(format string, args ...any)

// Service holds the sockets, indexed by the kernel's socket ids.
type Service struct {
	Stack *stack.Stack
	// Ready reports a socket's epoll mask to the kernel (SysSvcReady).
	Ready func(id int, mask uint32)

	mu    sync.Mutex
	socks map[uint64]*socket
}

type socket struct {
	svc   *Service
	id    uint64
	typ   int // 1 SOCK_STREAM, 2 SOCK_DGRAM
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	entry waiter.Entry

	mu   sync.Mutex // serialises readiness reports
	last uint32
}

// NewService returns a service on st.
func NewService(st *stack.Stack, ready func(id int, mask uint32)) *Service {
	return &Service{Stack: st, Ready: ready, socks: map[uint64]*socket{}}
}

// Blocks reports whether a request may wait (a blocking socket): the
// caller then runs it on its own goroutine.
func Blocks(s *boot.SvcSlot) bool {
	switch s.Op {
	case boot.SvcAccept, boot.SvcConnect, boot.SvcRead, boot.SvcWrite:
		return s.Flags&boot.SvcNonblock == 0
	}
	return false
}

// Handle performs one request and returns the system call's result.
func (v *Service) Handle(s *boot.SvcSlot) int64 {
	if s.Op == boot.SvcSocket {
		return v.socket(s.Sock, int(s.Args[0]), int(s.Args[1]), int(s.Args[2]))
	}
	v.mu.Lock()
	so := v.socks[s.Sock]
	v.mu.Unlock()
	if so == nil {
		return -eBADF
	}
	nb := s.Flags&boot.SvcNonblock != 0
	a := s.Args
	switch s.Op {
	case boot.SvcBind:
		addr, errno := readSockaddr(uintptr(a[0]), uintptr(a[1]))
		if errno != 0 {
			return -errno
		}
		return errnoOf(so.ep.Bind(addr))
	case boot.SvcListen:
		backlog := int(int32(a[0]))
		if backlog <= 0 {
			backlog = 1
		}
		return errnoOf(so.ep.Listen(backlog))
	case boot.SvcAccept:
		return so.accept(uintptr(a[0]), uintptr(a[1]), a[3], nb)
	case boot.SvcConnect:
		addr, errno := readSockaddr(uintptr(a[0]), uintptr(a[1]))
		if errno != 0 {
			return -errno
		}
		return so.connect(addr, nb)
	case boot.SvcRead:
		return so.read(s, nb)
	case boot.SvcWrite:
		return so.write(s, nb)
	case boot.SvcGetsockopt:
		return so.getsockopt(int(a[0]), int(a[1]), uintptr(a[2]), uintptr(a[3]))
	case boot.SvcSetsockopt:
		return so.setsockopt(int(a[0]), int(a[1]), uintptr(a[2]), uintptr(a[3]))
	case boot.SvcGetsockname, boot.SvcGetpeername:
		var fa tcpip.FullAddress
		var err tcpip.Error
		if s.Op == boot.SvcGetsockname {
			fa, err = so.ep.GetLocalAddress()
		} else {
			fa, err = so.ep.GetRemoteAddress()
		}
		if err != nil {
			return errnoOf(err)
		}
		return writeSockaddr(uintptr(a[0]), uintptr(a[1]), fa)
	case boot.SvcShutdown:
		var f tcpip.ShutdownFlags
		switch a[0] {
		case 0:
			f = tcpip.ShutdownRead
		case 1:
			f = tcpip.ShutdownWrite
		case 2:
			f = tcpip.ShutdownRead | tcpip.ShutdownWrite
		default:
			return -eINVAL
		}
		r := errnoOf(so.ep.Shutdown(f))
		so.report()
		return r
	case boot.SvcClose:
		v.mu.Lock()
		delete(v.socks, s.Sock)
		v.mu.Unlock()
		so.wq.EventUnregister(&so.entry)
		so.ep.Close()
		return 0
	}
	return -eINVAL
}

func (v *Service) socket(id uint64, domain, typ, proto int) int64 {
	if domain != 2 {
		return -eAFNOSUPPORT
	}
	var tp tcpip.TransportProtocolNumber
	switch typ {
	case 1:
		tp = tcp.ProtocolNumber
		if proto != 0 && proto != 6 {
			return -ePROTONOSUPP
		}
	case 2:
		tp = udp.ProtocolNumber
		if proto != 0 && proto != 17 {
			return -ePROTONOSUPP
		}
	default:
		return -ePROTOTYPE
	}
	wq := new(waiter.Queue)
	ep, err := v.Stack.NewEndpoint(tp, ipv4.ProtocolNumber, wq)
	if err != nil {
		return errnoOf(err)
	}
	v.add(id, typ, ep, wq)
	return 0
}

func (v *Service) add(id uint64, typ int, ep tcpip.Endpoint, wq *waiter.Queue) *socket {
	so := &socket{svc: v, id: id, typ: typ, ep: ep, wq: wq}
	so.entry = waiter.NewFunctionEntry(allEvents, func(waiter.EventMask) { so.report() })
	wq.EventRegister(&so.entry)
	v.mu.Lock()
	v.socks[id] = so
	v.mu.Unlock()
	so.report()
	return so
}

// report tells the kernel the socket's readiness if it changed. gVisor's
// event bits are Linux's epoll bits.
func (so *socket) report() {
	so.mu.Lock()
	defer so.mu.Unlock()
	m := uint32(so.ep.Readiness(allEvents))
	if m == so.last {
		return
	}
	so.last = m
	if so.svc.Ready != nil {
		so.svc.Ready(int(so.id), m)
	}
}

// wait blocks until the socket shows one of mask's events.
func (so *socket) wait(mask waiter.EventMask) {
	e, ch := waiter.NewChannelEntry(mask)
	so.wq.EventRegister(&e)
	defer so.wq.EventUnregister(&e)
	if so.ep.Readiness(mask) != 0 {
		return
	}
	<-ch
}

func (so *socket) accept(addr, alen uintptr, newID uint64, nb bool) int64 {
	for {
		var peer tcpip.FullAddress
		nep, nwq, err := so.ep.Accept(&peer)
		if _, ok := err.(*tcpip.ErrWouldBlock); ok {
			so.report()
			if nb {
				return -eAGAIN
			}
			so.wait(waiter.EventIn)
			continue
		}
		so.report()
		if err != nil {
			return errnoOf(err)
		}
		so.svc.add(newID, so.typ, nep, nwq)
		if addr != 0 {
			if r := writeSockaddr(addr, alen, peer); r < 0 {
				return r
			}
		}
		return 0
	}
}

func (so *socket) connect(addr tcpip.FullAddress, nb bool) int64 {
	err := so.ep.Connect(addr)
	defer so.report()
	switch err.(type) {
	case nil:
		return 0
	case *tcpip.ErrConnectStarted:
		if nb {
			return -eINPROGRESS
		}
		so.wait(waiter.EventOut | waiter.EventErr | waiter.EventHUp)
		return errnoOf(so.ep.LastError())
	}
	return errnoOf(err)
}

// iovecs returns the request's buffers.
func iovecs(s *boot.SvcSlot) [][]byte {
	if s.Flags&boot.SvcFlat != 0 {
		return [][]byte{mem(uintptr(s.Args[0]), uintptr(s.Args[1]))}
	}
	n := int(s.Args[1])
	if n > 1024 {
		n = 1024
	}
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		iov := uintptr(s.Args[0]) + uintptr(i)*16
		base := *(*uint64)(ptr(iov))
		l := *(*uint64)(ptr(iov + 8))
		if l > 0 {
			out = append(out, mem(uintptr(base), uintptr(l)))
		}
	}
	return out
}

// iovWriter fills the caller's buffers in order.
type iovWriter struct {
	bufs [][]byte
	n    int
}

func (w *iovWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 && len(w.bufs) > 0 {
		c := copy(w.bufs[0], p)
		w.bufs[0] = w.bufs[0][c:]
		if len(w.bufs[0]) == 0 {
			w.bufs = w.bufs[1:]
		}
		p = p[c:]
		total += c
	}
	w.n += total
	if len(p) > 0 {
		return total, io.ErrShortWrite
	}
	return total, nil
}

func (so *socket) read(s *boot.SvcSlot, nb bool) int64 {
	const msgPeek = 0x2
	bufs := iovecs(s)
	size := 0
	for _, b := range bufs {
		size += len(b)
	}
	for {
		w := &iovWriter{bufs: bufs}
		res, err := so.ep.Read(w, tcpip.ReadOptions{Peek: s.Args[4]&msgPeek != 0, NeedRemoteAddr: s.Args[2] != 0})
		switch err.(type) {
		case nil:
			so.report()
			if s.Args[2] != 0 {
				if r := writeSockaddr(uintptr(s.Args[2]), uintptr(s.Args[3]), res.RemoteAddr); r < 0 {
					return r
				}
			}
			if so.typ == 2 && res.Total > res.Count {
				return int64(res.Count) // datagram truncated, as Linux without MSG_TRUNC
			}
			return int64(res.Count)
		case *tcpip.ErrWouldBlock:
			so.report()
			if nb || size == 0 {
				if size == 0 {
					return 0
				}
				return -eAGAIN
			}
			so.wait(waiter.EventIn | waiter.EventHUp | waiter.EventErr | waiter.EventRdHUp)
			continue
		case *tcpip.ErrClosedForReceive:
			so.report()
			if Debug != nil {
				Debug("read: closed for receive: state %v, readiness %#x", so.ep.State(), so.ep.Readiness(allEvents))
			}
			return 0
		}
		so.report()
		return errnoOf(err)
	}
}

// iovReader reads the caller's buffers in order.
type iovReader struct{ bufs [][]byte }

func (r *iovReader) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 && len(r.bufs) > 0 {
		c := copy(p, r.bufs[0])
		r.bufs[0] = r.bufs[0][c:]
		if len(r.bufs[0]) == 0 {
			r.bufs = r.bufs[1:]
		}
		p = p[c:]
		total += c
	}
	if total == 0 && len(r.bufs) == 0 {
		return 0, io.EOF
	}
	return total, nil
}

func (r *iovReader) Len() int {
	n := 0
	for _, b := range r.bufs {
		n += len(b)
	}
	return n
}

func (so *socket) write(s *boot.SvcSlot, nb bool) int64 {
	var opts tcpip.WriteOptions
	if s.Args[2] != 0 {
		to, errno := readSockaddr(uintptr(s.Args[2]), uintptr(s.Args[3]))
		if errno != 0 {
			return -errno
		}
		opts.To = &to
	}
	bufs := iovecs(s)
	total := int64(0)
	for {
		r := &iovReader{bufs: bufs}
		if r.Len() == 0 {
			return total
		}
		n, err := so.ep.Write(r, opts)
		total += n
		bufs = r.bufs
		switch err.(type) {
		case nil:
			if r.Len() > 0 && so.typ == 1 {
				continue // a partial stream write: go on with the rest
			}
			so.report()
			return total
		case *tcpip.ErrWouldBlock:
			so.report()
			if total > 0 && nb {
				return total
			}
			if nb {
				return -eAGAIN
			}
			so.wait(waiter.EventOut | waiter.EventHUp | waiter.EventErr)
			continue
		}
		so.report()
		if total > 0 {
			return total
		}
		return errnoOf(err)
	}
}

func (so *socket) getsockopt(level, name int, val, lenp uintptr) int64 {
	if val == 0 || lenp == 0 {
		return -eFAULT
	}
	l := *(*uint32)(ptr(lenp))
	put := func(v int32) int64 {
		if l < 4 {
			return -eINVAL
		}
		*(*int32)(ptr(val)) = v
		*(*uint32)(ptr(lenp)) = 4
		return 0
	}
	b2i := func(b bool) int32 {
		if b {
			return 1
		}
		return 0
	}
	o := so.ep.SocketOptions()
	switch {
	case level == 1 && name == 4: // SO_ERROR
		err := so.ep.LastError()
		so.report()
		return put(int32(-errnoOf(err)))
	case level == 1 && name == 3: // SO_TYPE
		return put(int32(so.typ))
	case level == 1 && name == 2: // SO_REUSEADDR
		return put(b2i(o.GetReuseAddress()))
	case level == 1 && name == 9: // SO_KEEPALIVE
		return put(b2i(o.GetKeepAlive()))
	case level == 1 && name == 7: // SO_SNDBUF
		return put(int32(o.GetSendBufferSize()))
	case level == 1 && name == 8: // SO_RCVBUF
		return put(int32(o.GetReceiveBufferSize()))
	case level == 6 && name == 1: // TCP_NODELAY
		return put(b2i(!o.GetDelayOption()))
	case level == 1 && name == 39: // SO_DOMAIN
		return put(2)
	}
	return -eNOPROTOOPT
}

func (so *socket) setsockopt(level, name int, val, l uintptr) int64 {
	var v int32
	if l >= 4 && val != 0 {
		v = *(*int32)(ptr(val))
	} else if l > 0 && val == 0 {
		return -eFAULT
	}
	o := so.ep.SocketOptions()
	switch {
	case level == 1 && name == 2: // SO_REUSEADDR
		o.SetReuseAddress(v != 0)
	case level == 1 && name == 15: // SO_REUSEPORT
		o.SetReusePort(v != 0)
	case level == 1 && name == 9: // SO_KEEPALIVE
		o.SetKeepAlive(v != 0)
	case level == 1 && name == 6: // SO_BROADCAST
		o.SetBroadcast(v != 0)
	case level == 1 && name == 7: // SO_SNDBUF
		o.SetSendBufferSize(int64(v)*2, true)
	case level == 1 && name == 8: // SO_RCVBUF
		o.SetReceiveBufferSize(int64(v)*2, true)
	case level == 6 && name == 1: // TCP_NODELAY
		o.SetDelayOption(v == 0)
	case level == 6 && name == 4: // TCP_KEEPIDLE
		opt := tcpip.KeepaliveIdleOption(int64(v) * 1e9)
		return errnoOf(so.ep.SetSockOpt(&opt))
	case level == 6 && name == 5: // TCP_KEEPINTVL
		opt := tcpip.KeepaliveIntervalOption(int64(v) * 1e9)
		return errnoOf(so.ep.SetSockOpt(&opt))
	case level == 6 && name == 6: // TCP_KEEPCNT
		return errnoOf(so.ep.SetSockOptInt(tcpip.KeepaliveCountOption, int(v)))
	case level == 1 && name == 13: // SO_LINGER: accepted, closes are graceful
	default:
		// Options the stack does not model are accepted and ignored,
		// as a program only tunes with them.
	}
	return 0
}

// readSockaddr parses a struct sockaddr_in.
func readSockaddr(a, n uintptr) (tcpip.FullAddress, int64) {
	if a == 0 || n < 8 {
		return tcpip.FullAddress{}, eINVAL
	}
	b := mem(a, min(n, 16))
	if binary.LittleEndian.Uint16(b) != 2 {
		return tcpip.FullAddress{}, eAFNOSUPPORT
	}
	fa := tcpip.FullAddress{Port: binary.BigEndian.Uint16(b[2:])}
	if ip := [4]byte(b[4:8]); ip != [4]byte{} {
		fa.Addr = tcpip.AddrFrom4(ip)
	}
	return fa, 0
}

// writeSockaddr stores a struct sockaddr_in; lenp is the in/out socklen_t.
func writeSockaddr(a, lenp uintptr, fa tcpip.FullAddress) int64 {
	if a == 0 || lenp == 0 {
		return 0
	}
	l := *(*uint32)(ptr(lenp))
	var b [16]byte
	binary.LittleEndian.PutUint16(b[:], 2)
	binary.BigEndian.PutUint16(b[2:], fa.Port)
	if fa.Addr.Len() == 4 {
		ip := fa.Addr.As4()
		copy(b[4:], ip[:])
	}
	copy(mem(a, uintptr(min(l, 16))), b[:])
	*(*uint32)(ptr(lenp)) = 16
	return 0
}

// ptr turns a program address into a pointer. The program's memory is not
// this runtime's: its garbage collector ignores such pointers.
func ptr(a uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&a)) }

func mem(a, n uintptr) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(ptr(a)), n)
}

// errnoOf maps a stack error to a negated Linux errno (0 for nil).
func errnoOf(err tcpip.Error) int64 {
	switch err.(type) {
	case nil:
		return 0
	case *tcpip.ErrWouldBlock:
		return -eAGAIN
	case *tcpip.ErrConnectStarted:
		return -eINPROGRESS
	case *tcpip.ErrAlreadyConnecting:
		return -eALREADY
	case *tcpip.ErrAlreadyConnected:
		return -eISCONN
	case *tcpip.ErrNotConnected:
		return -eNOTCONN
	case *tcpip.ErrConnectionRefused:
		return -eCONNREFUSED
	case *tcpip.ErrConnectionReset:
		return -eCONNRESET
	case *tcpip.ErrConnectionAborted:
		return -eCONNABORTED
	case *tcpip.ErrClosedForSend, *tcpip.ErrAborted:
		return -ePIPE
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		return -eADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		return -eADDRNOTAVAIL
	case *tcpip.ErrHostUnreachable:
		return -eHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable:
		return -eNETUNREACH
	case *tcpip.ErrTimeout:
		return -eTIMEDOUT
	case *tcpip.ErrMessageTooLong:
		return -eMSGSIZE
	case *tcpip.ErrNoBufferSpace:
		return -eNOBUFS
	case *tcpip.ErrBadAddress:
		return -eFAULT
	case *tcpip.ErrUnknownProtocolOption:
		return -eNOPROTOOPT
	case *tcpip.ErrNotSupported:
		return -eOPNOTSUPP
	case *tcpip.ErrAddressFamilyNotSupported:
		return -eAFNOSUPPORT
	case *tcpip.ErrNotPermitted:
		return -ePERM
	case *tcpip.ErrClosedForReceive:
		return 0
	}
	return -eINVAL
}
