package kernel

// Pipes: a 64 KiB ring per pipe, in memory the kernel maps once per pipe
// slot (slots are reused, so their buffers are too). Readiness changes bump
// the fds' generations so edge-triggered epoll watchers (the Go netpoller)
// see each edge once. Constraints: trap context (cpu.go); klock guards all.

const (
	pipeSize  = 64 << 10
	maxPipes  = 64
	pipeVBase = 0x7fff_c000_0000 // above mmapTop: never handed to the program
)

type pipe struct {
	used             bool
	mapped           bool
	head, n          uintptr
	readers, writers int32
	rfd, wfd         int32
}

var pipes [maxPipes]pipe

func pipeBuf(i int32) uintptr { return pipeVBase + uintptr(i)*pipeSize }

func pipeCreate(out uintptr, flags int) int64 {
	if badPtr(out) {
		return -_EFAULT
	}
	klock.lock()
	defer klock.unlock()
	pi := int32(-1)
	for i := range pipes {
		if !pipes[i].used {
			pi = int32(i)
			break
		}
	}
	if pi < 0 {
		return -_EMFILE
	}
	p := &pipes[pi]
	if !p.mapped {
		mmlock.lock()
		err := pt.Populate(pipeBuf(pi), pipeSize)
		mmlock.unlock()
		if err != nil {
			return -_ENOMEM
		}
		p.mapped = true
	}
	r := allocFD(fdPipeR)
	if r < 0 {
		return r
	}
	w := allocFD(fdPipeW)
	if w < 0 {
		fds[r].kind = fdFree
		return w
	}
	*p = pipe{used: true, mapped: true, readers: 1, writers: 1, rfd: int32(r), wfd: int32(w)}
	nb := flags&0x800 != 0
	fds[r].pipe, fds[w].pipe = pi, pi
	fds[r].nonblock, fds[w].nonblock = nb, nb
	*i32(out) = int32(r)
	*i32(out + 4) = int32(w)
	return 0
}

// pipeChanged records a readiness change on both ends and wakes waiters.
func pipeChanged(p *pipe) {
	if p.rfd >= 0 {
		fds[p.rfd].gen++
	}
	if p.wfd >= 0 {
		fds[p.wfd].gen++
	}
	wakeEpollWaiters()
}

func pipeClose(fd int) {
	p := &pipes[fds[fd].pipe]
	if fds[fd].kind == fdPipeR {
		p.readers--
		if p.readers == 0 {
			p.rfd = -1
		}
	} else {
		p.writers--
		if p.writers == 0 {
			p.wfd = -1
		}
	}
	pipeChanged(p)
	if p.readers == 0 && p.writers == 0 {
		p.used = false
	}
}

func pipeRead(c int, cur int32, fd int, a, n uintptr) int64 {
	klock.lock()
	p := &pipes[fds[fd].pipe]
	if p.n == 0 {
		if p.writers == 0 {
			klock.unlock()
			return 0 // EOF
		}
		if fds[fd].nonblock {
			klock.unlock()
			return -_EAGAIN
		}
		block(c, cur, wPipe, 0, 0)
		return blocked
	}
	if n > p.n {
		n = p.n
	}
	buf := ubytes(pipeBuf(fds[fd].pipe), pipeSize)
	dst := ubytes(a, n)
	k := uintptr(copy(dst, buf[p.head:]))
	if k < n {
		copy(dst[k:], buf)
	}
	p.head = (p.head + n) % pipeSize
	p.n -= n
	pipeChanged(p)
	kunlock()
	return int64(n)
}

func pipeWrite(c int, cur int32, fd int, a, n uintptr) int64 {
	klock.lock()
	p := &pipes[fds[fd].pipe]
	if p.readers == 0 {
		klock.unlock()
		return -32 // EPIPE (SIGPIPE is not delivered)
	}
	space := pipeSize - p.n
	if space == 0 {
		if fds[fd].nonblock {
			klock.unlock()
			return -_EAGAIN
		}
		block(c, cur, wPipe, 0, 0)
		return blocked
	}
	if n > space {
		n = space
	}
	buf := ubytes(pipeBuf(fds[fd].pipe), pipeSize)
	src := ubytes(a, n)
	tail := (p.head + p.n) % pipeSize
	k := uintptr(copy(buf[tail:], src))
	if k < n {
		copy(buf, src[k:])
	}
	p.n += n
	pipeChanged(p)
	kunlock()
	return int64(n)
}

// dupFD implements dup (newfd < 0 or dup) and dup2/dup3.
func dupFD(old, newfd int, anyFD bool) int64 {
	klock.lock()
	defer klock.unlock()
	if !validFD(old) {
		return -_EBADF
	}
	if anyFD {
		newfd = -1
		for i := range fds {
			if fds[i].kind == fdFree {
				newfd = i
				break
			}
		}
		if newfd < 0 {
			return -_EMFILE
		}
	}
	if newfd < 0 || newfd >= maxFDs {
		return -_EBADF
	}
	if newfd == old {
		return int64(newfd)
	}
	if validFD(newfd) && (fds[newfd].kind == fdPipeR || fds[newfd].kind == fdPipeW) {
		pipeClose(newfd)
	}
	fds[newfd] = fds[old]
	usedFD(newfd)
	fds[newfd].ep = 0
	switch fds[old].kind {
	case fdSocket:
		socks[fds[old].sock].refs++
	case fdPipeR:
		pipes[fds[old].pipe].readers++
	case fdPipeW:
		pipes[fds[old].pipe].writers++
	}
	return int64(newfd)
}
