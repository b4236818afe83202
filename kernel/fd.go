package kernel

// File descriptors: the console (0, 1, 2), eventfd and epoll, which is what
// the Go runtime's netpoller needs even in a program without sockets;
// pipes, host files and sockets (sock.go).
//
// epoll: each descriptor records the one epoll instance watching it (the
// Go runtime uses one per program), so an epoll instance has no size
// limit of its own and closing a descriptor drops its watch, as on Linux.
//
// Constraints: trap context (cpu.go); the table is guarded by klock.

import (
	"github.com/cumulusdb/cumulus/kernel/boot"
)

const maxFDs = 1024

const (
	fdFree = iota
	fdConsole
	fdEventfd
	fdEpoll
	fdPipeR
	fdPipeW
	fdHost   // a file on a host share (kernel/hostfs.go)
	fdNull   // /dev/null
	fdSocket // a socket of the network service (sock.go)
)

type fdEntry struct {
	kind     int32
	ep       int32 // epoll descriptor watching this one, plus one (0: none)
	nonblock bool
	pipe     int32  // pipe index for fdPipeR/fdPipeW
	host     int32  // monitor handle for fdHost
	sock     int32  // socket id for fdSocket
	count    uint64 // eventfd counter
	gen      uint64 // bumped on every readiness change (EPOLLET edges)
	wevents  uint32 // the watch: events asked for
	wdata    uint64 // the watch: user data
	lastGen  uint64 // the watch: generation last reported (edge-triggered)
}

var fds [maxFDs]fdEntry

// fdHigh is one past the highest descriptor ever used: epoll scans stop
// there instead of walking all maxFDs entries at every wait. klock.
var fdHigh = 3

// usedFD notes that descriptor fd is in use. klock held.
func usedFD(fd int) {
	if fd >= fdHigh {
		fdHigh = fd + 1
	}
}

func initFDs() {
	for i := 0; i < 3; i++ {
		fds[i].kind = fdConsole
	}
}

func allocFD(kind int32) int64 {
	for i := range fds {
		if fds[i].kind == fdFree {
			fds[i] = fdEntry{kind: kind}
			usedFD(i)
			return int64(i)
		}
	}
	return -_EMFILE
}

func validFD(fd int) bool { return fd >= 0 && fd < maxFDs && fds[fd].kind != fdFree }

func closeFD(c int, cur int32, fd int) int64 {
	klock.lock()
	if !validFD(fd) {
		klock.unlock()
		return -_EBADF
	}
	kind := fds[fd].kind
	fds[fd].ep = 0
	if fd == svcEventFD {
		svcEventFD = -1
	}
	if kind == fdEpoll {
		for i := range fds {
			if fds[i].ep == int32(fd)+1 {
				fds[i].ep = 0
			}
		}
	}
	switch kind {
	case fdSocket:
		return sockClose(c, cur, fd)
	case fdPipeR, fdPipeW:
		pipeClose(fd)
	case fdHost:
		h := fds[fd].host
		fds[fd].kind = fdFree
		kunlock()
		hostCall(sysClose, [6]uintptr{uintptr(h)}, 0)
		return 0
	}
	fds[fd].kind = fdFree
	kunlock()
	return 0
}

// consoleWrite hands the bytes to the monitor, which writes them to its
// stdout or stderr. One exit per call; the Go runtime and os.File write
// whole buffers, so this is one exit per Write.
func consoleWrite(fd int, a, n uintptr) int64 {
	if n == 0 {
		return 0
	}
	if badPtr(a) {
		return -_EFAULT
	}
	hypercall2(boot.HCWrite, uint32(fd), uint64(a), uint64(n))
	return int64(n)
}

func sysWriteFD(c int, cur int32, fd int, a, n uintptr) int64 {
	if fd < 0 || fd >= maxFDs {
		return -_EBADF
	}
	switch fds[fd].kind {
	case fdConsole:
		if fd == 0 {
			fd = 1
		}
		return consoleWrite(fd, a, n)
	case fdEventfd:
		if n < 8 {
			return -_EINVAL
		}
		klock.lock()
		fds[fd].count += *u64(a)
		fds[fd].gen++
		wakeEpollFor(fd)
		kunlock()
		return 8
	case fdPipeW:
		return pipeWrite(c, cur, fd, a, n)
	case fdNull:
		return int64(n)
	case fdSocket:
		if !bufOK(a, n) {
			return -_EFAULT
		}
		return sockIO(c, cur, fd, boot.SvcWrite, boot.SvcFlat, 0, a, n, 0, 0)
	case fdHost:
		if !hostBuf(a, n) {
			return -_EFAULT
		}
		return hostCall(sysWrite, [6]uintptr{uintptr(fd), a, n}, 1)
	}
	return -_EBADF
}

func sysWritevFD(c int, cur int32, fd int, iov uintptr, cnt int) int64 {
	if fd >= 0 && fd < maxFDs && fds[fd].kind == fdSocket {
		if cnt < 0 || !iovOK(iov, uintptr(cnt)) {
			return -_EFAULT
		}
		return sockIO(c, cur, fd, boot.SvcWrite, 0, 0, iov, uintptr(cnt), 0, 0)
	}
	var total int64
	for i := 0; i < cnt; i++ {
		base := uintptr(*u64(iov + uintptr(i)*16))
		n := uintptr(*u64(iov + uintptr(i)*16 + 8))
		r := sysWriteFD(c, cur, fd, base, n)
		if r < 0 {
			if total > 0 {
				return total
			}
			return r
		}
		total += r
	}
	return total
}

func sysReadFD(c int, cur int32, fd int, a, n uintptr) int64 {
	if fd < 0 || fd >= maxFDs {
		return -_EBADF
	}
	switch fds[fd].kind {
	case fdConsole:
		return 0 // standard input is empty: EOF
	case fdPipeR:
		return pipeRead(c, cur, fd, a, n)
	case fdNull:
		return 0
	case fdSocket:
		if !bufOK(a, n) {
			return -_EFAULT
		}
		return sockIO(c, cur, fd, boot.SvcRead, boot.SvcFlat, 0, a, n, 0, 0)
	case fdHost:
		if !hostBuf(a, n) {
			return -_EFAULT
		}
		return hostCall(sysRead, [6]uintptr{uintptr(fd), a, n}, 1)
	case fdEventfd:
		if n < 8 {
			return -_EINVAL
		}
		klock.lock()
		v := fds[fd].count
		if v == 0 {
			klock.unlock()
			return -_EAGAIN
		}
		fds[fd].count = 0
		fds[fd].gen++
		klock.unlock()
		*u64(a) = v
		return 8
	}
	return -_EBADF
}

func fcntl(fd int, cmd int, arg uintptr) int64 {
	if !validFD(fd) {
		return -_EBADF
	}
	switch cmd {
	case 1, 2: // F_GETFD, F_SETFD
		return 0
	case 4: // F_SETFL
		fds[fd].nonblock = arg&0x800 != 0
		return 0
	case 3: // F_GETFL
		fl := int64(2) // O_RDWR
		switch fds[fd].kind {
		case fdPipeR:
			fl = 0
		case fdPipeW:
			fl = 1
		}
		if fds[fd].nonblock {
			fl |= 0x800
		}
		return fl
	}
	return -_EINVAL
}

func fstat(fd int, st uintptr) int64 {
	if !validFD(fd) {
		return -_EBADF
	}
	if fds[fd].kind == fdHost {
		if !hostBuf(st, 144) {
			return -_EFAULT
		}
		return hostCall(sysFstat, [6]uintptr{uintptr(fd), st}, 1)
	}
	b := ubytes(st, 144)
	clear(b)
	mode := uint32(0o600)
	switch fds[fd].kind {
	case fdConsole, fdNull:
		mode |= 0o020000 // S_IFCHR
	case fdPipeR, fdPipeW:
		mode |= 0o010000 // S_IFIFO
	case fdSocket:
		mode |= 0o140000 // S_IFSOCK
	}
	*u32(st + 24) = mode
	*u64(st + 56) = 4096 // st_blksize
	return 0
}

func eventfdCreate(init uint64) int64 {
	klock.lock()
	defer klock.unlock()
	fd := allocFD(fdEventfd)
	if fd >= 0 {
		fds[fd].count = init
		fds[fd].nonblock = true
	}
	return fd
}

func epollCreate() int64 {
	klock.lock()
	defer klock.unlock()
	return allocFD(fdEpoll)
}

func epollCtl(epfd, op, fd int, ev uintptr) int64 {
	klock.lock()
	defer klock.unlock()
	if !validFD(epfd) || fds[epfd].kind != fdEpoll || !validFD(fd) {
		return -_EBADF
	}
	if k := fds[fd].kind; k == fdHost || k == fdNull {
		return -_EPERM // regular files are not pollable, as on Linux
	}
	if fd == epfd {
		return -_EINVAL
	}
	f := &fds[fd]
	mine := f.ep == int32(epfd)+1
	switch op {
	case 1: // EPOLL_CTL_ADD
		if mine {
			return -_EEXIST
		}
		if f.ep != 0 {
			return -_ENOMEM // watched by another epoll instance: one each here
		}
		f.ep = int32(epfd) + 1
		f.wevents, f.wdata, f.lastGen = *u32(ev), *u64(ev + 4), ^uint64(0)
		return 0
	case 2: // EPOLL_CTL_DEL
		if !mine {
			return -_ENOENT
		}
		f.ep = 0
		return 0
	case 3: // EPOLL_CTL_MOD
		if !mine {
			return -_ENOENT
		}
		f.wevents, f.wdata, f.lastGen = *u32(ev), *u64(ev + 4), ^uint64(0)
		return 0
	}
	return -_EINVAL
}

// epollWait reports ready descriptors (struct epoll_event is 12 bytes,
// packed, on x86-64), or parks the thread until a readiness change or the
// timeout; a woken waiter re-executes the call to collect its events.
// Reporting starts after the descriptor reported last time, so that a
// busy low descriptor cannot starve the others.
func epollWait(c int, cur int32, epfd int, out uintptr, max int, timeoutMS int) int64 {
	klock.lock()
	if !validFD(epfd) || fds[epfd].kind != fdEpoll || max <= 0 {
		klock.unlock()
		return -_EINVAL
	}
	tag := int32(epfd) + 1
	n := 0
	high := fdHigh
	start := int(fds[epfd].count) % high // epoll entries use count as the scan cursor
	for k := 0; k < high && n < max; k++ {
		fd := (start + k) % high
		f := &fds[fd]
		if f.ep != tag || f.kind == fdFree {
			continue
		}
		if f.wevents&epollET != 0 && f.lastGen == f.gen {
			continue // edge-triggered: nothing changed since last report
		}
		ready := readiness(fd) & (f.wevents | 0x18) // EPOLLERR|EPOLLHUP always
		if ready == 0 {
			continue
		}
		f.lastGen = f.gen
		p := out + uintptr(n)*12
		*u32(p) = ready
		*u64(p + 4) = f.wdata
		n++
		fds[epfd].count = uint64(fd + 1)
	}
	if n > 0 || timeoutMS == 0 {
		klock.unlock()
		return int64(n)
	}
	var deadline int64
	if timeoutMS > 0 {
		deadline = nanotime() + int64(timeoutMS)*1e6
	}
	block(c, cur, wEpoll, uintptr(tag), deadline)
	return blocked
}

const epollET = 1 << 31

// readiness is the epoll event mask an fd would report now. klock held.
func readiness(fd int) uint32 {
	f := &fds[fd]
	switch f.kind {
	case fdEventfd:
		r := uint32(0x4) // EPOLLOUT
		if f.count > 0 {
			r |= 0x1 // EPOLLIN
		}
		return r
	case fdPipeR:
		p := &pipes[f.pipe]
		r := uint32(0)
		if p.n > 0 {
			r |= 0x1
		}
		if p.writers == 0 {
			r |= 0x1 | 0x10 | 0x2000 // EPOLLIN|EPOLLHUP|EPOLLRDHUP
		}
		return r
	case fdPipeW:
		p := &pipes[f.pipe]
		if p.readers == 0 {
			return 0x4 | 0x8 // EPOLLOUT|EPOLLERR
		}
		if p.n < pipeSize {
			return 0x4
		}
		return 0
	case fdConsole:
		return 0x4
	case fdSocket:
		return socks[f.sock].ready
	}
	return 0
}

// wakeEpollFor wakes the threads waiting in the epoll instance that
// watches fd, after fd's readiness changed; a descriptor nobody watches
// wakes nobody. (Two runtimes share the table, the program's and the
// network service's: waking every waiter made each one's readiness
// changes cost the other a spurious wake-up.) klock held.
func wakeEpollFor(fd int) {
	tag := uintptr(fds[fd].ep)
	if tag == 0 {
		return
	}
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state == tBlocked && t.waitKind == wEpoll && t.waitAddr == tag {
			wakeRestart(i)
		}
	}
}

// wakeEpollWaiters wakes every epoll and pipe waiter (pipes: their ends'
// waiters re-check). klock held.
func wakeEpollWaiters() {
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state == tBlocked && (t.waitKind == wEpoll || t.waitKind == wPipe) {
			wakeRestart(i)
		}
	}
}
