package kernel

// File descriptors: the console (0, 1, 2), eventfd and epoll, which is what
// the Go runtime's netpoller needs even in a program without sockets.
// Constraints: trap context (cpu.go); the table is guarded by klock.

import (
	"github.com/cumulusdb/cumulus/kernel/boot"
)

const maxFDs = 256

const (
	fdFree = iota
	fdConsole
	fdEventfd
	fdEpoll
)

const maxEpollWatch = 16

type epollWatch struct {
	fd     int32
	events uint32
	data   uint64
}

type fdEntry struct {
	kind   int32
	nwatch int32
	count  uint64 // eventfd counter
	watch  [maxEpollWatch]epollWatch
}

var fds [maxFDs]fdEntry

func initFDs() {
	for i := 0; i < 3; i++ {
		fds[i].kind = fdConsole
	}
}

func allocFD(kind int32) int64 {
	for i := range fds {
		if fds[i].kind == fdFree {
			fds[i] = fdEntry{kind: kind}
			return int64(i)
		}
	}
	return -_EMFILE
}

func validFD(fd int) bool { return fd >= 0 && fd < maxFDs && fds[fd].kind != fdFree }

func closeFD(fd int) int64 {
	klock.lock()
	defer klock.unlock()
	if !validFD(fd) {
		return -_EBADF
	}
	fds[fd].kind = fdFree
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
		wakeEpollWaiters()
		kunlock()
		return 8
	}
	return -_EBADF
}

func sysWritevFD(c int, cur int32, fd int, iov uintptr, cnt int) int64 {
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

func sysReadFD(fd int, a, n uintptr) int64 {
	if fd < 0 || fd >= maxFDs {
		return -_EBADF
	}
	switch fds[fd].kind {
	case fdConsole:
		return 0 // standard input is empty: EOF
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
		klock.unlock()
		*u64(a) = v
		return 8
	}
	return -_EBADF
}

func fcntl(fd int, cmd int) int64 {
	if !validFD(fd) {
		return -_EBADF
	}
	switch cmd {
	case 1, 2, 4: // F_GETFD, F_SETFD, F_SETFL
		return 0
	case 3: // F_GETFL
		if fds[fd].kind == fdConsole {
			return 2 // O_RDWR, blocking
		}
		return 2 | 0x800 // O_NONBLOCK
	}
	return -_EINVAL
}

func fstat(fd int, st uintptr) int64 {
	if !validFD(fd) {
		return -_EBADF
	}
	b := ubytes(st, 144)
	clear(b)
	mode := uint32(0o600)
	if fds[fd].kind == fdConsole {
		mode |= 0o020000 // S_IFCHR
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
	e := &fds[epfd]
	idx := -1
	for i := 0; i < int(e.nwatch); i++ {
		if e.watch[i].fd == int32(fd) {
			idx = i
		}
	}
	switch op {
	case 1: // EPOLL_CTL_ADD
		if idx >= 0 {
			return -_EEXIST
		}
		if e.nwatch == maxEpollWatch {
			return -_ENOMEM
		}
		e.watch[e.nwatch] = epollWatch{fd: int32(fd), events: *u32(ev), data: *u64(ev + 4)}
		e.nwatch++
		return 0
	case 2: // EPOLL_CTL_DEL
		if idx < 0 {
			return -_ENOENT
		}
		e.nwatch--
		e.watch[idx] = e.watch[e.nwatch]
		return 0
	case 3: // EPOLL_CTL_MOD
		if idx < 0 {
			return -_ENOENT
		}
		e.watch[idx].events = *u32(ev)
		e.watch[idx].data = *u64(ev + 4)
		return 0
	}
	return -_EINVAL
}

// epollWait reports ready descriptors (struct epoll_event is 12 bytes,
// packed, on x86-64), or parks the thread until an eventfd write or the
// timeout; a woken waiter re-executes the call to collect its events.
func epollWait(c int, cur int32, epfd int, out uintptr, max int, timeoutMS int) int64 {
	klock.lock()
	if !validFD(epfd) || fds[epfd].kind != fdEpoll || max <= 0 {
		klock.unlock()
		return -_EINVAL
	}
	e := &fds[epfd]
	n := 0
	for i := 0; i < int(e.nwatch) && n < max; i++ {
		w := &e.watch[i]
		ready := uint32(0)
		if fds[w.fd].kind == fdEventfd {
			if fds[w.fd].count > 0 {
				ready |= 0x1 // EPOLLIN
			}
			ready |= 0x4 // EPOLLOUT
		}
		ready &= w.events | 0x18 // EPOLLERR|EPOLLHUP always
		if ready == 0 {
			continue
		}
		p := out + uintptr(n)*12
		*u32(p) = ready
		*u64(p + 4) = w.data
		n++
	}
	if n > 0 || timeoutMS == 0 {
		klock.unlock()
		return int64(n)
	}
	var deadline int64
	if timeoutMS > 0 {
		deadline = nanotime() + int64(timeoutMS)*1e6
	}
	block(c, cur, wEpoll, 0, deadline)
	return blocked
}

func wakeEpollWaiters() {
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state == tBlocked && t.waitKind == wEpoll {
			wakeRestart(i)
		}
	}
}
