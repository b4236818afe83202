package kernel

// Linux system calls as the Go runtime, os and syscall packages make them.
// Constraints: trap context (cpu.go). The program's memory is reached
// directly (one address space); pointers are checked against the null
// guard only, so a wild pointer passed to a system call faults in the
// kernel and is reported rather than returned as EFAULT.

import (
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

const (
	_EPERM        = 1
	_ENOENT       = 2
	_EINTR        = 4
	_EBADF        = 9
	_EAGAIN       = 11
	_ENOMEM       = 12
	_EFAULT       = 14
	_EEXIST       = 17
	_ENODEV       = 19
	_EINVAL       = 22
	_EMFILE       = 24
	_ENOTTY       = 25
	_ENOSYS       = 38
	_ETIMEDOUT    = 110
	_ENFILE       = 23
	_ESPIPE       = 29
	_ENOTSOCK     = 88
	_EAFNOSUPPORT = 97
)

// Linux x86-64 system call numbers used here.
const (
	sysRead           = 0
	sysWrite          = 1
	sysOpen           = 2
	sysClose          = 3
	sysStat           = 4
	sysFstat          = 5
	sysLstat          = 6
	sysMmap           = 9
	sysMprotect       = 10
	sysMunmap         = 11
	sysBrk            = 12
	sysRtSigaction    = 13
	sysRtSigprocmask  = 14
	sysRtSigreturn    = 15
	sysIoctl          = 16
	sysPread64        = 17
	sysWritev         = 20
	sysAccess         = 21
	sysSchedYield     = 24
	sysDup            = 32
	sysDup2           = 33
	sysDup3           = 292
	sysMadvise        = 28
	sysMincore        = 27
	sysSysinfo        = 99
	sysNanosleep      = 35
	sysGetpid         = 39
	sysClone          = 56
	sysExit           = 60
	sysKill           = 62
	sysUname          = 63
	sysFcntl          = 72
	sysGetcwd         = 79
	sysReadlink       = 89
	sysGettimeofday   = 96
	sysGetrlimit      = 97
	sysGetuid         = 102
	sysGetgid         = 104
	sysGeteuid        = 107
	sysGetegid        = 108
	sysGetppid        = 110
	sysGetgroups      = 115
	sysGetpgrp        = 111
	sysSigaltstack    = 131
	sysPrctl          = 157
	sysArchPrctl      = 158
	sysSetrlimit      = 160
	sysGettid         = 186
	sysTkill          = 200
	sysTime           = 201
	sysFutex          = 202
	sysSchedSetaff    = 203
	sysSchedGetaff    = 204
	sysEpollCreate    = 213
	sysGetdents64     = 217
	sysSetTidAddress  = 218
	sysClockGettime   = 228
	sysClockGetres    = 229
	sysClockNanosleep = 230
	sysExitGroup      = 231
	sysEpollWait      = 232
	sysEpollCtl       = 233
	sysTgkill         = 234
	sysOpenat         = 257
	sysNewfstatat     = 262
	sysReadlinkat     = 267
	sysFaccessat      = 269
	sysSetRobustList  = 273
	sysEpollPwait     = 281
	sysEventfd        = 284
	sysEventfd2       = 290
	sysEpollCreate1   = 291
	sysPipe2          = 293
	sysPrlimit64      = 302
	sysGetrandom      = 318
	sysStatx          = 332
	sysRseq           = 334
	sysSplice         = 275
	sysSendfile       = 40
	sysFaccessat2     = 439
	sysPwrite64       = 18
	sysLseek          = 8
	sysFsync          = 74
	sysFdatasync      = 75
	sysTruncate       = 76
	sysFtruncate      = 77
	sysChdir          = 80
	sysFchdir         = 81
	sysRename         = 82
	sysMkdir          = 83
	sysRmdir          = 84
	sysUnlink         = 87
	sysChmod          = 90
	sysFchmod         = 91
	sysMkdirat        = 258
	sysUnlinkat       = 263
	sysRenameat       = 264
	sysFchmodat       = 268
	sysRenameat2      = 316
	sysLink           = 86
	sysSymlink        = 88
	sysChown          = 92
	sysFchown         = 93
	sysLchown         = 94
	sysFchownat       = 260
	sysLinkat         = 265
	sysSymlinkat      = 266
	sysUtimensat      = 280
	sysFallocate      = 285
)

// Program memory. Each accessor first maps committed-but-untouched pages
// (userRange): a page fault inside the kernel is fatal.
func u32(a uintptr) *uint32 { userRange(a, 4); return (*uint32)(ptrOf(a)) }
func u64(a uintptr) *uint64 { userRange(a, 8); return (*uint64)(ptrOf(a)) }
func i32(a uintptr) *int32  { userRange(a, 4); return (*int32)(ptrOf(a)) }

func ubytes(a, n uintptr) []byte {
	if n == 0 {
		return nil
	}
	userRange(a, n)
	return unsafe.Slice((*byte)(ptrOf(a)), n)
}

func badPtr(a uintptr) bool { return a < boot.NullGuardEnd }

func dispatch(c int, cur int32, t *thread, nr uint64) int64 {
	a0, a1, a2, a3, a4, a5 := uintptr(t.tf.rdi), uintptr(t.tf.rsi), uintptr(t.tf.rdx), uintptr(t.tf.r10), uintptr(t.tf.r8), uintptr(t.tf.r9)
	switch nr {
	case sysWrite:
		return sysWriteFD(c, cur, int(a0), a1, a2)
	case sysWritev:
		return sysWritevFD(c, cur, int(a0), a1, int(a2))
	case sysRead:
		return sysReadFD(c, cur, int(a0), a1, a2)
	case sysClose:
		return closeFD(c, cur, int(a0))
	case sysMmap:
		return sysMmapImpl(a0, a1, a2, a3, int32(a4), a5)
	case sysMunmap:
		return sysMunmapImpl(a0, a1)
	case sysMadvise:
		return sysMadviseImpl(a0, a1, int(a2))
	case sysMprotect:
		return sysMprotectImpl(a0, a1, a2)
	case sysMincore:
		return sysMincoreImpl(a0, a1, a2)
	case sysSysinfo:
		return sysSysinfoImpl(a0)
	case sysBrk:
		return 0
	case sysArchPrctl:
		switch a0 {
		case 0x1002: // ARCH_SET_FS
			t.tf.fsbase = uint64(a1)
			return 0
		case 0x1003: // ARCH_GET_FS
			*u64(a1) = t.tf.fsbase
			return 0
		}
		return -_EINVAL
	case sysGettid:
		return int64(t.tid)
	case sysGetpid, sysGetpgrp:
		return 1
	case sysGetppid:
		return 0
	case sysGetuid, sysGetgid, sysGeteuid, sysGetegid:
		return 0
	case sysGetgroups: // root, in no supplementary group
		return 0
	case sysSetTidAddress:
		t.clearTID = a0
		return int64(t.tid)
	case sysSetRobustList:
		return 0
	case sysRtSigaction:
		return doRtSigaction(t.proc, int(a0), a1, a2, a3)
	case sysRtSigprocmask:
		return doRtSigprocmask(t, int(a0), a1, a2, a3)
	case sysSigaltstack:
		return doSigaltstack(t, a0, a1)
	case sysRtSigreturn:
		return doRtSigreturn(t)
	case sysTgkill:
		return doTgkill(int32(a1), int(a2), t.proc)
	case sysTkill:
		return doTgkill(int32(a0), int(a1), t.proc)
	case sysKill:
		if int32(a0) != 1 && int32(a0) != 0 && int32(a0) != -1 {
			return -3 // ESRCH: there is one process
		}
		return doTgkill(0, int(a1), t.proc)
	case sysSchedGetaff:
		if a1 < 8 {
			return -_EINVAL
		}
		tt := threadByTID(int32(a0), cur)
		if tt == nil {
			return -3 // ESRCH
		}
		clear(ubytes(a2, a1))
		mask := uint64(1)<<uint(ncpu) - 1
		if tt.affinity != 0 {
			mask &= tt.affinity
		}
		*u64(a2) = mask
		return 8
	case sysSchedSetaff:
		if a1 < 8 {
			return -_EINVAL
		}
		tt := threadByTID(int32(a0), cur)
		if tt == nil {
			return -3 // ESRCH
		}
		mask := *u64(a2) & (uint64(1)<<uint(ncpu) - 1)
		if mask == 0 {
			return -_EINVAL
		}
		if mask == uint64(1)<<uint(ncpu)-1 {
			mask = 0
		}
		tt.affinity = mask
		if tt == t && mask != 0 && mask&(1<<uint(c)) == 0 {
			// Running on a CPU it may no longer use: move now.
			t.tf.rax = 0
			klock.lock()
			enqueue(cur)
			pickNext(c)
			return blocked
		}
		return 0
	case sysSchedYield:
		klock.lock()
		if runqN == 0 {
			klock.unlock()
			return 0
		}
		t.tf.rax = 0
		enqueue(cur)
		pickNext(c)
		return blocked
	case sysFutex:
		return sysFutexImpl(c, cur, a0, int(a1), uint32(a2), a3)
	case sysNanosleep:
		return sleepRel(c, cur, a0)
	case sysClockNanosleep:
		if a1&1 != 0 { // TIMER_ABSTIME
			d := tsNanos(a2)
			if a0 == 0 { // CLOCK_REALTIME
				d -= bootUnix
			}
			klock.lock()
			block(c, cur, wSleep, 0, d)
			return blocked
		}
		return sleepRel(c, cur, a2)
	case sysClockGettime:
		var ns int64
		if a0 == 0 || a0 == 8 || a0 == 5 { // REALTIME, REALTIME_ALARM, REALTIME_COARSE
			ns = realtime()
		} else {
			ns = nanotime()
		}
		*u64(a1) = uint64(ns / 1e9)
		*u64(a1 + 8) = uint64(ns % 1e9)
		return 0
	case sysClockGetres:
		if a1 != 0 {
			*u64(a1) = 0
			*u64(a1 + 8) = 1
		}
		return 0
	case sysGettimeofday:
		ns := realtime()
		if a0 != 0 {
			*u64(a0) = uint64(ns / 1e9)
			*u64(a0 + 8) = uint64(ns % 1e9 / 1000)
		}
		return 0
	case sysTime:
		s := realtime() / 1e9
		if a0 != 0 {
			*u64(a0) = uint64(s)
		}
		return s
	case sysClone:
		return sysCloneImpl(cur, a0, a1, a2, a3, a4)
	case sysExit:
		exitThread(c, cur)
		return blocked
	case sysExitGroup:
		if t.proc != 0 {
			kprint("cumulus kernel: the network service exited\n")
		}
		for {
			outl(boot.HCExit, uint32(a0))
		}
	case sysUname:
		uname(a0)
		return 0
	case sysGetrlimit:
		return rlimit(int(a0), a1)
	case sysPrlimit64:
		if a3 != 0 {
			return rlimit(int(a1), a3)
		}
		return 0
	case sysSetrlimit:
		return 0
	case sysGetrandom:
		getrandom(a0, a1)
		return int64(a1)
	case sysFcntl:
		return fcntl(int(a0), int(a1), a2)
	case sysFstat:
		return fstat(int(a0), a1)
	case sysIoctl:
		return -_ENOTTY
	case sysOpen:
		return sysHostOpen(-100, a0, a1, a2)
	case sysOpenat:
		return sysHostOpen(int(int32(a0)), a1, a2, a3)
	case sysStat, sysLstat:
		if !hostPath(a0) || !hostBuf(a1, 144) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1}, 0)
	case sysNewfstatat:
		if a1 != 0 && userRange(a1, 1) && *(*byte)(ptrOf(a1)) == 0 && a3&0x1000 != 0 { // AT_EMPTY_PATH
			return fstat(int(int32(a0)), a2)
		}
		if !hostPath(a1) || !hostBuf(a2, 144) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3}, 1)
	case sysAccess, sysMkdir, sysRmdir, sysUnlink, sysChdir, sysChmod, sysTruncate:
		if !hostPath(a0) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1}, 0)
	case sysFaccessat, sysFaccessat2, sysMkdirat, sysUnlinkat, sysFchmodat:
		if !hostPath(a1) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3}, 1)
	case sysSymlink, sysLink:
		if !hostPath(a0) || !hostPath(a1) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1}, 0)
	case sysSymlinkat:
		if !hostPath(a0) || !hostPath(a2) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2}, 2)
	case sysLinkat:
		if !hostPath(a1) || !hostPath(a3) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3, a4}, 1|4)
	case sysUtimensat:
		if a1 != 0 && !hostPath(a1) || a2 != 0 && !hostBuf(a2, 32) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3}, 1)
	case sysChown, sysLchown, sysFchownat, sysFchown:
		return -_EPERM
	case sysRename:
		if !hostPath(a0) || !hostPath(a1) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1}, 0)
	case sysRenameat, sysRenameat2:
		if !hostPath(a1) || !hostPath(a3) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3, a4}, 1|4)
	case sysReadlink:
		if !hostPath(a0) || !hostBuf(a1, a2) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2}, 0)
	case sysReadlinkat:
		if !hostPath(a1) || !hostBuf(a2, a3) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3}, 1)
	case sysGetdents64, sysPread64, sysPwrite64:
		if !hostFD(int(int32(a0))) {
			return -_EBADF
		}
		if !hostBuf(a1, a2) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3}, 1)
	case sysFallocate:
		if !hostFD(int(int32(a0))) {
			return -_EBADF
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2, a3}, 1)
	case sysLseek, sysFsync, sysFdatasync, sysFtruncate, sysFchmod, sysFchdir:
		if !hostFD(int(int32(a0))) {
			if validFD(int(int32(a0))) {
				if nr == sysLseek {
					return -29 // ESPIPE
				}
				return -_EINVAL
			}
			return -_EBADF
		}
		return hostCall(nr, [6]uintptr{a0, a1, a2}, 1)
	case sysGetcwd:
		if !hostBuf(a0, a1) {
			return -_EFAULT
		}
		return hostCall(nr, [6]uintptr{a0, a1}, 0)
	case sysStatx:
		return -_ENOSYS
	case sysEpollCreate, sysEpollCreate1:
		return epollCreate()
	case sysEpollCtl:
		return epollCtl(int(a0), int(a1), int(a2), a3)
	case sysEpollWait, sysEpollPwait:
		return epollWait(c, cur, int(a0), a1, int(a2), int(int32(a3)))
	case sysEventfd, sysEventfd2:
		return eventfdCreate(uint64(a0))
	case sysPrctl:
		return -_EINVAL
	case sysPipe2:
		return pipeCreate(a0, int(a1))
	case sysDup, sysDup2, sysDup3:
		return dupFD(int(a0), int(a1), nr == sysDup)
	case sysRseq:
		return -_ENOSYS
	case sysSplice, sysSendfile:
		// EINVAL, as Linux for descriptors it cannot splice: Go then
		// falls back to read and write (ENOSYS would end io.Copy).
		return -_EINVAL
	}
	if r, ok := sockSyscall(c, cur, t, nr, a0, a1, a2, a3, a4, a5); ok {
		return r
	}
	atomic.AddUint64(&stats.Unknown, 1)
	return -_ENOSYS
}

func tsNanos(a uintptr) int64 { return int64(*u64(a))*1e9 + int64(*u64(a + 8)) }

func sleepRel(c int, cur int32, ts uintptr) int64 {
	d := tsNanos(ts)
	if d <= 0 {
		return 0
	}
	klock.lock()
	block(c, cur, wSleep, 0, nanotime()+d)
	return blocked
}

func sysFutexImpl(c int, cur int32, addr uintptr, op int, val uint32, ts uintptr) int64 {
	if badPtr(addr) || addr&3 != 0 {
		return -_EINVAL
	}
	switch op & 0x7f {
	case 0, 9: // FUTEX_WAIT, FUTEX_WAIT_BITSET
		var deadline int64
		if ts != 0 {
			d := tsNanos(ts)
			if op&0x7f == 9 {
				deadline = d // absolute, CLOCK_MONOTONIC
			} else {
				deadline = nanotime() + d
			}
			if deadline <= 0 {
				deadline = 1
			}
		}
		klock.lock()
		if atomic.LoadUint32(u32(addr)) != val {
			klock.unlock()
			return -_EAGAIN
		}
		block(c, cur, wFutex, addr, deadline)
		return blocked
	case 1, 10: // FUTEX_WAKE, FUTEX_WAKE_BITSET
		klock.lock()
		n := futexWake(addr, int(val))
		kunlock()
		return int64(n)
	}
	return -_ENOSYS
}

// futexWake wakes up to n threads waiting on addr. klock held.
func futexWake(addr uintptr, n int) int {
	woken := 0
	for i := int32(0); i < nthreads && woken < n; i++ {
		t := &threads[i]
		if t.state == tBlocked && t.waitKind == wFutex && t.waitAddr == addr {
			wake(i, 0)
			woken++
		}
	}
	return woken
}

const (
	cloneVM            = 0x100
	cloneVfork         = 0x4000
	cloneSetTLS        = 0x80000
	cloneParentSetTID  = 0x100000
	cloneChildClearTID = 0x200000
	cloneChildSetTID   = 0x1000000
)

func sysCloneImpl(cur int32, flags, stack, ptid, ctid, tls uintptr) int64 {
	if flags&cloneVM == 0 || flags&cloneVfork != 0 {
		return -_ENOSYS // one address space: no fork, no exec
	}
	klock.lock()
	i := allocThread()
	if i < 0 {
		klock.unlock()
		return -_EAGAIN
	}
	nt := &threads[i]
	parent := &threads[cur]
	nt.tf = parent.tf
	nt.tf.rax = 0
	nt.tf.kind = 0
	if stack != 0 {
		nt.tf.rsp = uint64(stack)
	}
	if flags&cloneSetTLS != 0 {
		nt.tf.fsbase = uint64(tls)
	}
	nt.tid = nextTID
	nextTID++
	nt.clearTID = 0
	nt.sigPending = 0
	nt.sigMask = parent.sigMask
	nt.altSP, nt.altSize, nt.altFlags = 0, 0, ssDisable
	nt.affinity = parent.affinity
	nt.proc = parent.proc
	if nt.proc != 0 {
		live-- // allocThread counted it
	}
	nt.waitKind = wNone
	nt.deadline = 0
	if flags&cloneParentSetTID != 0 && !badPtr(ptid) {
		*i32(ptid) = nt.tid
	}
	if flags&cloneChildSetTID != 0 && !badPtr(ctid) {
		*i32(ctid) = nt.tid
	}
	if flags&cloneChildClearTID != 0 {
		nt.clearTID = ctid
	}
	tid := nt.tid
	enqueue(i)
	kunlock()
	return int64(tid)
}

func exitThread(c int, cur int32) {
	klock.lock()
	t := &threads[cur]
	if t.clearTID != 0 && !badPtr(t.clearTID) {
		*i32(t.clearTID) = 0
		futexWake(t.clearTID, 1)
	}
	t.state = tFree
	if t.proc == 0 {
		live--
	}
	if live == 0 {
		klock.unlock()
		for {
			outl(boot.HCExit, 0)
		}
	}
	curThread[c] = -1
	pickNext(c)
}

func rlimit(res int, out uintptr) int64 {
	if out == 0 {
		return 0
	}
	cur, max := ^uint64(0), ^uint64(0)
	switch res {
	case 7: // RLIMIT_NOFILE
		cur, max = maxFDs, maxFDs
	case 3: // RLIMIT_STACK
		cur = boot.MainStackSize
	}
	*u64(out) = cur
	*u64(out + 8) = max
	return 0
}

func uname(a uintptr) {
	b := ubytes(a, 65*6)
	clear(b)
	copy(b[0:], "Linux")
	copy(b[65:], "cumulus")
	copy(b[130:], "6.1.0-cumulus")
	copy(b[195:], "#1 SMP CumulusDB")
	copy(b[260:], "x86_64")
	copy(b[325:], "(none)")
}

var rngState uint64

func getrandom(a, n uintptr) {
	b := ubytes(a, n)
	for i := 0; i < len(b); {
		v, ok := rdrand()
		if !ok {
			// xorshift over the TSC: weak, only if RDRAND is unavailable.
			rngState ^= rdtsc()
			rngState ^= rngState << 13
			rngState ^= rngState >> 7
			rngState ^= rngState << 17
			v = rngState
		}
		for k := 0; k < 8 && i < len(b); k++ {
			b[i] = byte(v >> (8 * k))
			i++
		}
	}
}

// threadByTID finds a thread (tid 0: the caller).
func threadByTID(tid int32, cur int32) *thread {
	if tid == 0 {
		return &threads[cur]
	}
	for i := int32(0); i < nthreads; i++ {
		if threads[i].state != tFree && threads[i].tid == tid {
			return &threads[i]
		}
	}
	return nil
}
