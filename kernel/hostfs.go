package kernel

// Host directory shares (`cumulus run -v HOST:GUEST`): file system calls on
// shared paths are forwarded to the monitor, which resolves the guest path
// against its share table (confined to the shares), performs the call on
// the host and copies data between host and guest memory. One hypercall
// (one VM exit, ~46 µs) per call: meant for test data, configuration and
// scratch files, not for the database's I/O, which goes through block
// devices.
//
// Constraints: trap context (cpu.go). The fd table is guarded by klock;
// the hypercall itself is made without it.

import (
	"github.com/cumulusdb/cumulus/kernel/boot"
)

// hostCall forwards system call nr with its arguments; guest fds among them
// (as named by fdArgs bits) are translated to the monitor's handles first.
// The monitor writes the result (or -errno) into hcArgs[0].
func hostCall(nr uint64, a [6]uintptr, fdArgs uint) int64 {
	pc := pcpu()
	for i := 0; i < 6; i++ {
		v := uint64(a[i])
		if fdArgs&(1<<i) != 0 {
			fd := int(int32(a[i]))
			switch {
			case fd == -100: // AT_FDCWD
			case fd >= 0 && fd < maxFDs && fds[fd].kind == fdHost:
				v = uint64(fds[fd].host)
			default:
				return -_EBADF
			}
		}
		pc.hcArgs[i+1] = v
	}
	pc.hcArgs[0] = nr
	outl(boot.HCHostFS, 0)
	return int64(pc.hcArgs[0])
}

// User buffers the monitor will read or write must be mapped first: the
// monitor reads guest memory through the guest's page tables.
func hostBuf(a, n uintptr) bool { return n == 0 || userRange(a, n) }

func hostPath(a uintptr) bool { return userRange(a, 1) }

// sysHostOpen opens through the monitor and installs a guest fd.
func sysHostOpen(dirfd int, path uintptr, flags, mode uintptr) int64 {
	if !hostPath(path) {
		return -_EFAULT
	}
	if special := openSpecial(path); special != 0 {
		return special
	}
	h := hostCall(sysOpenat, [6]uintptr{uintptr(dirfd), path, flags, mode}, 1)
	if h < 0 {
		return h
	}
	klock.lock()
	fd := allocFD(fdHost)
	if fd >= 0 {
		fds[fd].host = int32(h)
	}
	klock.unlock()
	if fd < 0 {
		hostCall(sysClose, [6]uintptr{uintptr(h)}, 0)
	}
	return fd
}

// openSpecial serves /dev/null without the monitor.
func openSpecial(path uintptr) int64 {
	const devnull = "/dev/null\x00"
	b := ubytes(path, uintptr(len(devnull)))
	if string(b) != devnull {
		return 0
	}
	klock.lock()
	defer klock.unlock()
	fd := allocFD(fdNull)
	if fd == 0 {
		return 0 // fd 0 would read as "not special"; cannot happen while stdin is open
	}
	return fd
}

func hostFD(fd int) bool { return fd >= 0 && fd < maxFDs && fds[fd].kind == fdHost }
