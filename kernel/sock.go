package kernel

// Sockets: the program's socket system calls are forwarded to the network
// service, a second Go program in the image that runs gVisor's TCP/IP
// stack (protocol and rationale in kernel/boot/netsvc.go).
//
// The kernel keeps, per socket: its id (the service's handle), how many
// descriptors refer to it, and the epoll event mask the service last
// reported. Everything that needs the stack is a request: the caller's
// slot is filled, its index pushed on the ring, the service woken, and
// the caller blocks (wSvc) until the service answers with SysSvcDone.
// A blocked request cannot be interrupted by a signal: the service may
// still be writing into the caller's buffers.
//
// Constraints: trap context (cpu.go); socks, the ring's tail and the
// slots of blocked threads are guarded by klock.

import (
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

const (
	sysSocket      = 41
	sysConnect     = 42
	sysAccept      = 43
	sysSendto      = 44
	sysRecvfrom    = 45
	sysSendmsg     = 46
	sysRecvmsg     = 47
	sysShutdown    = 48
	sysBind        = 49
	sysListen      = 50
	sysGetsockname = 51
	sysGetpeername = 52
	sysSocketpair  = 53
	sysSetsockopt  = 54
	sysGetsockopt  = 55
	sysAccept4     = 288
)

const (
	afInet      = 2
	afInet6     = 10
	sockNonblk  = 0x800 // SOCK_NONBLOCK == O_NONBLOCK
	sockCloexec = 0x80000
	msgDontwait = 0x40

	epollIn    = 0x1
	epollOut   = 0x4
	epollErr   = 0x8
	epollHup   = 0x10
	epollRdhup = 0x2000
)

type sockEntry struct {
	used  bool
	refs  int32  // descriptors referring to it
	fd    int32  // the descriptor it was opened as (the only one while refs == 1)
	ready uint32 // epoll mask last reported by the service
}

var (
	svcShared  boot.SvcShared
	svcStarted bool
	socks      [boot.MaxSockets]sockEntry
)

func allocSock() int32 {
	for i := range socks {
		if !socks[i].used {
			socks[i] = sockEntry{used: true, refs: 1}
			return int32(i)
		}
	}
	return -1
}

// startSvc creates the service's first thread, at the entry point of the
// ELF the monitor loaded, on the stack it built. klock held.
func startSvc() bool {
	if bi.SvcEntry == 0 {
		return false
	}
	i := allocThread()
	if i < 0 {
		return false
	}
	t := &threads[i]
	t.tf = trapFrame{rip: bi.SvcEntry, rsp: bi.SvcStack, rflags: 0x202}
	t.proc = 1
	live-- // allocThread counted it: the service does not keep the VM alive
	t.tid = nextTID
	nextTID++
	t.clearTID = 0
	t.sigPending, t.sigMask = 0, 0
	t.altSP, t.altSize, t.altFlags = 0, 0, ssDisable
	t.affinity = 0
	t.waitKind = wNone
	t.deadline = 0
	enqueue(i)
	svcStarted = true
	return true
}

// svcSubmit queues the current thread's request (its slot is filled) and
// blocks it until the service completes it. klock held on entry; released.
func svcSubmit(c int, cur int32) int64 {
	if !svcStarted && !startSvc() {
		klock.unlock()
		return -_EAFNOSUPPORT
	}
	sh := &svcShared
	sh.Ring[sh.Tail%boot.MaxThreads] = cur
	atomic.StoreUint32(&sh.Tail, sh.Tail+1)
	atomic.AddUint32(&sh.Seq, 1)
	futexWake(uintptr(unsafe.Pointer(&sh.Seq)), 1)
	svcSignal()
	block(c, cur, wSvc, 0, 0)
	return blocked
}

func svcSlot(cur int32, op uint32, sock int32, flags uint32, a ...uintptr) {
	s := &svcShared.Slots[cur]
	s.Op, s.Flags, s.Sock, s.Result = op, flags, uint64(sock), 0
	s.Args = [6]uint64{}
	for i, v := range a {
		s.Args[i] = uint64(v)
	}
}

// sockFD returns the socket of descriptor fd. klock held.
func sockFD(fd int) (int32, bool) {
	if !validFD(fd) || fds[fd].kind != fdSocket {
		return -1, false
	}
	return fds[fd].sock, true
}

func sysSocketImpl(c int, cur int32, domain, typ, proto uintptr) int64 {
	if domain != afInet {
		return -_EAFNOSUPPORT // IPv6 and AF_UNIX: not yet; Go falls back to IPv4
	}
	klock.lock()
	fd := allocFD(fdSocket)
	if fd < 0 {
		klock.unlock()
		return fd
	}
	id := allocSock()
	if id < 0 {
		fds[fd].kind = fdFree
		klock.unlock()
		return -_ENFILE
	}
	fds[fd].sock = id
	socks[id].fd = int32(fd)
	fds[fd].nonblock = typ&sockNonblk != 0
	svcSlot(cur, boot.SvcSocket, id, 0, domain, typ&^(sockNonblk|sockCloexec), proto, 0, 0, uintptr(fd))
	return svcSubmit(c, cur)
}

func sysAcceptImpl(c int, cur int32, fd int, addr, alen, flags uintptr) int64 {
	klock.lock()
	id, ok := sockFD(fd)
	if !ok {
		klock.unlock()
		return -_ENOTSOCK
	}
	nb := fds[fd].nonblock
	if nb && socks[id].ready&(epollIn|epollErr|epollHup) == 0 {
		klock.unlock()
		return -_EAGAIN
	}
	nfd := allocFD(fdSocket)
	if nfd < 0 {
		klock.unlock()
		return nfd
	}
	nid := allocSock()
	if nid < 0 {
		fds[nfd].kind = fdFree
		klock.unlock()
		return -_ENFILE
	}
	fds[nfd].sock = nid
	socks[nid].fd = int32(nfd)
	fds[nfd].nonblock = flags&sockNonblk != 0
	svcSlot(cur, boot.SvcAccept, id, flagsOf(nb), addr, alen, flags, uintptr(nid), 0, uintptr(nfd))
	return svcSubmit(c, cur)
}

func flagsOf(nonblock bool) uint32 {
	if nonblock {
		return boot.SvcNonblock
	}
	return 0
}

// sockIO forwards a read or write. want is the readiness without which a
// non-blocking call would only return EAGAIN: the kernel answers that
// itself, without a round trip.
func sockIO(c int, cur int32, fd int, op uint32, flags uint32, msgFlags uintptr, a0, a1, a2, a3 uintptr) int64 {
	klock.lock()
	id, ok := sockFD(fd)
	if !ok {
		klock.unlock()
		return -_ENOTSOCK
	}
	nb := fds[fd].nonblock || msgFlags&msgDontwait != 0
	want := uint32(epollIn | epollErr | epollHup | epollRdhup)
	if op == boot.SvcWrite {
		want = epollOut | epollErr | epollHup
	}
	if nb && socks[id].ready&want == 0 {
		klock.unlock()
		return -_EAGAIN
	}
	svcSlot(cur, op, id, flags|flagsOf(nb), a0, a1, a2, a3, msgFlags)
	return svcSubmit(c, cur)
}

// sockCall forwards a call that has no fast path.
func sockCall(c int, cur int32, fd int, op uint32, a ...uintptr) int64 {
	klock.lock()
	id, ok := sockFD(fd)
	if !ok {
		klock.unlock()
		if validFD(fd) {
			return -_ENOTSOCK
		}
		return -_EBADF
	}
	svcSlot(cur, op, id, flagsOf(fds[fd].nonblock), a...)
	return svcSubmit(c, cur)
}

// sockClose drops one descriptor's reference; the last one closes the
// socket in the service (a round trip, so that a later socket cannot
// overtake it). klock held on entry; released.
func sockClose(c int, cur int32, fd int) int64 {
	id := fds[fd].sock
	fds[fd].kind = fdFree
	s := &socks[id]
	s.refs--
	if s.refs > 0 {
		if s.refs == 1 { // the descriptor left may be a dup
			for i := range fds {
				if fds[i].kind == fdSocket && fds[i].sock == id {
					s.fd = int32(i)
				}
			}
		}
		kunlock()
		return 0
	}
	svcSlot(cur, boot.SvcClose, id, 0)
	return svcSubmit(c, cur)
}

// svcDone completes thread i's request (SysSvcDone, from the service).
// Socket and accept allocated a descriptor up front: on success the
// caller gets it, on failure it and the socket are released.
func svcDone(i int32, result int64) int64 {
	if i < 0 || i >= boot.MaxThreads {
		return -_EINVAL
	}
	klock.lock()
	defer kunlock()
	t := &threads[i]
	if t.state != tBlocked || t.waitKind != wSvc {
		return -_EINVAL
	}
	s := &svcShared.Slots[i]
	switch s.Op {
	case boot.SvcSocket, boot.SvcAccept:
		fd := int(s.Args[5])
		id := fds[fd].sock
		if result < 0 {
			fds[fd].kind = fdFree
			socks[id] = sockEntry{}
		} else {
			result = int64(fd)
		}
	case boot.SvcClose:
		socks[s.Sock] = sockEntry{}
		result = 0
	}
	wake(i, result)
	return 0
}

// svcReady records a socket's readiness (SysSvcReady) and wakes epoll
// waiters when it changed.
func svcReady(id int, mask uint32) int64 {
	if id < 0 || id >= boot.MaxSockets {
		return -_EINVAL
	}
	klock.lock()
	defer kunlock()
	s := &socks[id]
	if !s.used || s.ready == mask {
		return 0
	}
	s.ready = mask
	if s.refs == 1 { // no dup: one descriptor, no table scan
		fds[s.fd].gen++
		wakeEpollFor(int(s.fd))
		return 0
	}
	for fd := range fds {
		if fds[fd].kind == fdSocket && fds[fd].sock == int32(id) {
			fds[fd].gen++
			wakeEpollFor(fd)
		}
	}
	return 0
}

// svcWaitIRQ is the device (plus one) whose interrupts also end a
// SysSvcWait; checkIRQs wakes the waiter on the ring's sequence word.
var svcWaitIRQ int

// svcEventFD is the service's eventfd (SysSvcEvent), or -1.
var svcEventFD = -1

// svcEvent registers the service's eventfd and the device whose
// interrupts signal it (SysSvcEvent).
func svcEvent(fd, irq int) int64 {
	klock.lock()
	defer klock.unlock()
	if !validFD(fd) || fds[fd].kind != fdEventfd {
		return -_EBADF
	}
	svcEventFD = fd
	if irq > 0 && irq <= boot.MaxDevices {
		svcWaitIRQ = irq
	}
	return 0
}

// svcSignal signals the service's eventfd: a request was pushed or its
// device interrupted. Every signal is an edge for epoll (the service
// need not read the counter to see the next one: it looks at the ring
// and the device, which changed before the signal). klock held.
func svcSignal() {
	fd := svcEventFD
	if fd < 0 || fds[fd].kind != fdEventfd {
		return
	}
	f := &fds[fd]
	f.count = 1
	f.gen++
	wakeEpollFor(fd)
}

// svcWait parks the service's waiting thread until the ring moves past
// seen or device irq-1 interrupts after irqSeen (SysSvcWait).
func svcWait(c int, cur int32, seen uint32, irq int, irqSeen uint32) int64 {
	klock.lock()
	if atomic.LoadUint32(&svcShared.Seq) != seen {
		klock.unlock()
		return 0
	}
	if irq > 0 && irq <= boot.MaxDevices {
		svcWaitIRQ = irq
		if atomic.LoadUint32(&bi.IRQCount[irq-1]) != irqSeen {
			klock.unlock()
			return 0
		}
	}
	block(c, cur, wFutex, uintptr(unsafe.Pointer(&svcShared.Seq)), 0)
	return blocked
}

// Argument checks. The service dereferences the caller's pointers
// directly, so every buffer is checked (and faulted in) here first: a bad
// pointer gets EFAULT, as on Linux, instead of a fault in the service.

// bufOK: [a, a+n) is program memory (n == 0 is always fine).
func bufOK(a, n uintptr) bool { return n == 0 || userRange(a, n) }

// lenBufOK: lenp points at a socklen_t and a at that many bytes (both
// optional when a is 0).
func lenBufOK(a, lenp uintptr) bool {
	if a == 0 {
		return true
	}
	if !userRange(lenp, 4) {
		return false
	}
	return bufOK(a, uintptr(*u32(lenp)))
}

// iovOK checks an iovec array and every buffer in it.
func iovOK(iov, cnt uintptr) bool {
	if cnt > 1024 {
		return false
	}
	if !bufOK(iov, cnt*16) {
		return false
	}
	for i := uintptr(0); i < cnt; i++ {
		if !bufOK(uintptr(*u64(iov + i*16)), uintptr(*u64(iov + i*16 + 8))) {
			return false
		}
	}
	return true
}

// sockSyscall dispatches the socket system calls. ok is false for other
// numbers.
func sockSyscall(c int, cur int32, t *thread, nr uint64, a0, a1, a2, a3, a4, a5 uintptr) (int64, bool) {
	fd := int(int32(a0))
	switch nr {
	case sysSocket:
		return sysSocketImpl(c, cur, a0, a1, a2), true
	case sysSocketpair:
		return -_EAFNOSUPPORT, true
	case sysBind:
		if !bufOK(a1, a2) {
			return -_EFAULT, true
		}
		return sockCall(c, cur, fd, boot.SvcBind, a1, a2), true
	case sysListen:
		return sockCall(c, cur, fd, boot.SvcListen, a1), true
	case sysConnect:
		if !bufOK(a1, a2) {
			return -_EFAULT, true
		}
		return sockCall(c, cur, fd, boot.SvcConnect, a1, a2), true
	case sysAccept, sysAccept4:
		if !lenBufOK(a1, a2) {
			return -_EFAULT, true
		}
		if nr == sysAccept {
			a3 = 0
		}
		return sysAcceptImpl(c, cur, fd, a1, a2, a3), true
	case sysGetsockname, sysGetpeername:
		if a1 == 0 || !lenBufOK(a1, a2) {
			return -_EFAULT, true
		}
		op := uint32(boot.SvcGetsockname)
		if nr == sysGetpeername {
			op = boot.SvcGetpeername
		}
		return sockCall(c, cur, fd, op, a1, a2), true
	case sysGetsockopt:
		if a3 == 0 || !lenBufOK(a3, a4) {
			return -_EFAULT, true
		}
		return sockCall(c, cur, fd, boot.SvcGetsockopt, a1, a2, a3, a4), true
	case sysSetsockopt:
		if !bufOK(a3, a4) {
			return -_EFAULT, true
		}
		return sockCall(c, cur, fd, boot.SvcSetsockopt, a1, a2, a3, a4), true
	case sysShutdown:
		return sockCall(c, cur, fd, boot.SvcShutdown, a1), true
	case sysSendto: // fd, buf, len, flags, addr, addrlen
		if !bufOK(a1, a2) || (a4 != 0 && !bufOK(a4, a5)) {
			return -_EFAULT, true
		}
		return sockIO(c, cur, fd, boot.SvcWrite, boot.SvcFlat, a3, a1, a2, a4, a5), true
	case sysRecvfrom: // fd, buf, len, flags, addr, *addrlen
		if !bufOK(a1, a2) || !lenBufOK(a4, a5) {
			return -_EFAULT, true
		}
		return sockIO(c, cur, fd, boot.SvcRead, boot.SvcFlat, a3, a1, a2, a4, a5), true
	case sysSendmsg: // fd, msghdr, flags
		if badPtr(a1) || !userRange(a1, 56) {
			return -_EFAULT, true
		}
		iov, cnt, name, nlen := uintptr(*u64(a1 + 16)), uintptr(*u64(a1 + 24)), uintptr(*u64(a1)), uintptr(*u32(a1 + 8))
		if !iovOK(iov, cnt) || (name != 0 && !bufOK(name, nlen)) {
			return -_EFAULT, true
		}
		return sockIO(c, cur, fd, boot.SvcWrite, 0, a2, iov, cnt, name, nlen), true
	case sysRecvmsg:
		if badPtr(a1) || !userRange(a1, 56) {
			return -_EFAULT, true
		}
		iov, cnt, name := uintptr(*u64(a1 + 16)), uintptr(*u64(a1 + 24)), uintptr(*u64(a1))
		if !iovOK(iov, cnt) || !lenBufOK(name, a1+8) {
			return -_EFAULT, true
		}
		return sockIO(c, cur, fd, boot.SvcRead, 0, a2, iov, cnt, name, a1+8), true
	}
	if t.proc == 1 {
		switch nr {
		case boot.SysSvcWait:
			return svcWait(c, cur, uint32(a0), int(a1), uint32(a2)), true
		case boot.SysSvcDone:
			return svcDone(int32(a0), int64(a1)), true
		case boot.SysSvcReady:
			return svcReady(int(a0), uint32(a1)), true
		case boot.SysSvcInfo:
			return int64(uintptr(unsafe.Pointer(&svcShared))), true
		case boot.SysSvcEvent:
			return svcEvent(int(a0), int(a1)), true
		}
	}
	return 0, false
}
