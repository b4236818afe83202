package vmm

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kernel/boot"
)

// Share makes a host directory visible in the guest (`-v HOST:GUEST[:ro]`).
type Share struct {
	Host     string
	Guest    string
	ReadOnly bool
}

// ParseShare reads HOST:GUEST[:ro].
func ParseShare(s string) (Share, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Share{}, fmt.Errorf("share %q: want HOST:GUEST[:ro]", s)
	}
	host, err := filepath.Abs(parts[0])
	if err != nil {
		return Share{}, err
	}
	if st, err := os.Stat(host); err != nil || !st.IsDir() {
		return Share{}, fmt.Errorf("share %q: %s is not a directory", s, host)
	}
	if !path.IsAbs(parts[1]) {
		return Share{}, fmt.Errorf("share %q: guest path must be absolute", s)
	}
	sh := Share{Host: host, Guest: path.Clean(parts[1])}
	if len(parts) == 3 {
		if parts[2] != "ro" {
			return Share{}, fmt.Errorf("share %q: unknown option %q", s, parts[2])
		}
		sh.ReadOnly = true
	}
	return sh, nil
}

// hostFS serves the HCHostFS hypercall: Linux file system calls on guest
// paths, resolved against the shares. Guest paths are cleaned and must lie
// inside a share; handles are the monitor's own small integers, never host
// descriptors, so the guest cannot name a host fd it was not given.
// Symbolic links inside a share are followed on the host (a share is as
// trusted as the directory it exposes).
type hostFS struct {
	mu     sync.Mutex
	shares []Share
	cwd    string
	files  map[int64]*hostFile
	next   int64
}

type hostFile struct {
	fd    int
	guest string // guest path, for *at calls relative to a directory
	ro    bool
}

func newHostFS(shares []Share, cwd string) *hostFS {
	if cwd == "" {
		cwd = "/"
	}
	return &hostFS{shares: shares, cwd: path.Clean(cwd), files: map[int64]*hostFile{}, next: 3}
}

func (h *hostFS) close() {
	for _, f := range h.files {
		unix.Close(f.fd)
	}
}

// resolve turns (dirfd, guest path) into a host path.
func (h *hostFS) resolve(dirfd int64, p string, write bool) (string, *Share, error) {
	base := h.cwd
	if int32(dirfd) != -100 {
		f, ok := h.files[dirfd]
		if !ok {
			return "", nil, unix.EBADF
		}
		base = f.guest
	}
	abs := p
	if !path.IsAbs(p) {
		abs = path.Join(base, p)
	}
	abs = path.Clean(abs)
	var best *Share
	for i := range h.shares {
		s := &h.shares[i]
		if abs == s.Guest || s.Guest == "/" || strings.HasPrefix(abs, s.Guest+"/") {
			if best == nil || len(s.Guest) > len(best.Guest) {
				best = s
			}
		}
	}
	if best == nil {
		return "", nil, unix.ENOENT
	}
	if write && best.ReadOnly {
		return "", nil, unix.EROFS
	}
	rel := strings.TrimPrefix(abs, best.Guest)
	host := filepath.Join(best.Host, filepath.FromSlash(rel))
	if strings.HasSuffix(p, "/") && !strings.HasSuffix(host, "/") {
		host += "/" // "link/" follows the link, as on Linux
	}
	return host, best, nil
}

// builtinFiles are what a Linux program expects to find in /etc when no
// share provides it: Go's resolver reads /etc/hosts, and without it
// "localhost" would go to DNS (and fail) inside the image. A share that
// covers the path takes precedence.
var builtinFiles = map[string]string{
	"/etc/hosts":         "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	"/etc/nsswitch.conf": "hosts: files dns\n",
}

// openBuiltin opens a read-only in-memory copy of a built-in file.
func (h *hostFS) openBuiltin(guest, content string) (int64, error) {
	fd, err := unix.MemfdCreate("cumulus"+strings.ReplaceAll(guest, "/", "-"), unix.MFD_CLOEXEC)
	if err != nil {
		return 0, err
	}
	if _, err := unix.Write(fd, []byte(content)); err != nil {
		unix.Close(fd)
		return 0, err
	}
	// Reopen read-only, so that the guest's writes fail as on a file it
	// may not write.
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	unix.Close(fd)
	if err != nil {
		return 0, err
	}
	h.next++
	h.files[h.next] = &hostFile{fd: ro, guest: guest, ro: true}
	return h.next, nil
}

func errno(err error) uint64 {
	e := unix.EIO
	errors.As(err, &e)
	return uint64(-int64(e))
}

// hostFSCall runs one forwarded system call for vCPU v.
func (v *vcpu) hostFSCall() {
	m := v.m
	h := m.fs
	arg := func(i int) uint64 { return v.hcArg(i + 1) }
	res := v.m.pc64(v.id, boot.PCHCArgs)
	nr := v.hcArg(0)
	h.mu.Lock()
	defer h.mu.Unlock()
	r, err := h.call(m, nr, arg)
	if err != nil {
		*res = errno(err)
		return
	}
	*res = uint64(r)
}

const maxIO = 1 << 20

func (h *hostFS) call(m *machine, nr uint64, arg func(int) uint64) (int64, error) {
	str := func(i int) (string, error) { return m.readString(arg(i)) }
	file := func(i int) (*hostFile, error) {
		f, ok := h.files[int64(arg(i))]
		if !ok {
			return nil, unix.EBADF
		}
		return f, nil
	}
	pathAt := func(dirArg, pathArg int, write bool) (string, *Share, error) {
		p, err := str(pathArg)
		if err != nil {
			return "", nil, unix.EFAULT
		}
		dir := int64(-100)
		if dirArg >= 0 {
			dir = int64(int32(arg(dirArg)))
		}
		return h.resolve(dir, p, write)
	}
	statOut := func(st *unix.Stat_t, addr uint64) (int64, error) {
		b := unsafe.Slice((*byte)(unsafe.Pointer(st)), unsafe.Sizeof(*st))
		if err := m.writeVirt(addr, b); err != nil {
			return 0, unix.EFAULT
		}
		return 0, nil
	}
	switch nr {
	case 257: // openat(dirfd, path, flags, mode)
		flags := int(arg(2))
		write := flags&(unix.O_WRONLY|unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC) != 0
		g, err := str(1)
		if err != nil {
			return 0, unix.EFAULT
		}
		if g == "" {
			return 0, unix.ENOENT // as Linux: an empty path names nothing
		}
		p, _, err := h.resolve(int64(int32(arg(0))), g, write)
		if content, ok := builtinFiles[path.Clean(g)]; ok && err == unix.ENOENT && !write {
			return h.openBuiltin(path.Clean(g), content)
		}
		if err != nil {
			return 0, err
		}
		// Data crosses through the monitor's buffers, which are not
		// aligned for O_DIRECT: shares are buffered.
		fd, err := unix.Open(p, flags&^unix.O_DIRECT|unix.O_CLOEXEC, uint32(arg(3)))
		if err != nil {
			return 0, err
		}
		base := h.cwd
		if d, ok := h.files[int64(int32(arg(0)))]; ok && int32(arg(0)) != -100 {
			base = d.guest
		}
		if !path.IsAbs(g) {
			g = path.Join(base, g)
		}
		h.next++
		h.files[h.next] = &hostFile{fd: fd, guest: path.Clean(g)}
		return h.next, nil
	case 3: // close(handle)
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		delete(h.files, int64(arg(0)))
		return 0, unix.Close(f.fd)
	case 0, 17: // read(h, buf, n), pread64(h, buf, n, off)
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		buf := make([]byte, min(arg(2), maxIO))
		var n int
		if nr == 0 {
			n, err = unix.Read(f.fd, buf)
		} else {
			n, err = unix.Pread(f.fd, buf, int64(arg(3)))
		}
		if err != nil {
			return 0, err
		}
		if err := m.writeVirt(arg(1), buf[:n]); err != nil {
			return 0, unix.EFAULT
		}
		return int64(n), nil
	case 1, 18: // write(h, buf, n), pwrite64(h, buf, n, off)
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		buf, err := m.readVirt(arg(1), min(arg(2), maxIO))
		if err != nil {
			return 0, unix.EFAULT
		}
		var n int
		if nr == 1 {
			n, err = unix.Write(f.fd, buf)
		} else {
			n, err = unix.Pwrite(f.fd, buf, int64(arg(3)))
		}
		return int64(n), err
	case 8: // lseek
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		return unix.Seek(f.fd, int64(arg(1)), int(arg(2)))
	case 5: // fstat
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(f.fd, &st); err != nil {
			return 0, err
		}
		return statOut(&st, arg(1))
	case 4, 6: // stat, lstat(path, st)
		p, _, err := pathAt(-1, 0, false)
		if err != nil {
			return 0, err
		}
		var st unix.Stat_t
		if nr == 4 {
			err = unix.Stat(p, &st)
		} else {
			err = unix.Lstat(p, &st)
		}
		if err != nil {
			return 0, err
		}
		return statOut(&st, arg(1))
	case 262: // newfstatat(dirfd, path, st, flags)
		p, _, err := pathAt(0, 1, false)
		if err != nil {
			return 0, err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(unix.AT_FDCWD, p, &st, int(arg(3))&unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return 0, err
		}
		return statOut(&st, arg(2))
	case 217: // getdents64(h, buf, n)
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		buf := make([]byte, min(arg(2), maxIO))
		n, err := unix.Getdents(f.fd, buf)
		if err != nil {
			return 0, err
		}
		if err := m.writeVirt(arg(1), buf[:n]); err != nil {
			return 0, unix.EFAULT
		}
		return int64(n), nil
	case 21, 269, 439: // access(path, mode), faccessat(2)(dirfd, path, mode, flags)
		dirArg, pathArg, modeArg := -1, 0, 1
		if nr != 21 {
			dirArg, pathArg, modeArg = 0, 1, 2
		}
		p, sh, err := pathAt(dirArg, pathArg, false)
		if err != nil {
			return 0, err
		}
		if arg(modeArg)&unix.W_OK != 0 && sh.ReadOnly {
			return 0, unix.EROFS
		}
		return 0, unix.Access(p, uint32(arg(modeArg)))
	case 83, 258: // mkdir(path, mode), mkdirat(dirfd, path, mode)
		dirArg, pathArg, modeArg := -1, 0, 1
		if nr == 258 {
			dirArg, pathArg, modeArg = 0, 1, 2
		}
		p, _, err := pathAt(dirArg, pathArg, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Mkdir(p, uint32(arg(modeArg)))
	case 84: // rmdir
		p, _, err := pathAt(-1, 0, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Rmdir(p)
	case 87: // unlink
		p, _, err := pathAt(-1, 0, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Unlink(p)
	case 263: // unlinkat(dirfd, path, flags)
		p, _, err := pathAt(0, 1, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Unlinkat(unix.AT_FDCWD, p, int(arg(2)))
	case 82: // rename(old, new)
		a, _, err := pathAt(-1, 0, true)
		if err != nil {
			return 0, err
		}
		b, _, err := pathAt(-1, 1, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Rename(a, b)
	case 264, 316: // renameat(2)(olddir, old, newdir, new[, flags])
		a, _, err := pathAt(0, 1, true)
		if err != nil {
			return 0, err
		}
		b, _, err := pathAt(2, 3, true)
		if err != nil {
			return 0, err
		}
		flags := uint(0)
		if nr == 316 {
			flags = uint(arg(4))
		}
		return 0, unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, flags)
	case 89, 267: // readlink(path, buf, n), readlinkat(dirfd, path, buf, n)
		dirArg, pathArg, bufArg := -1, 0, 1
		if nr == 267 {
			dirArg, pathArg, bufArg = 0, 1, 2
		}
		p, _, err := pathAt(dirArg, pathArg, false)
		if err != nil {
			return 0, err
		}
		buf := make([]byte, min(arg(bufArg+1), 4096))
		n, err := unix.Readlink(p, buf)
		if err != nil {
			return 0, err
		}
		if err := m.writeVirt(arg(bufArg), buf[:n]); err != nil {
			return 0, unix.EFAULT
		}
		return int64(n), nil
	case 90, 268: // chmod(path, mode), fchmodat(dirfd, path, mode)
		dirArg, pathArg, modeArg := -1, 0, 1
		if nr == 268 {
			dirArg, pathArg, modeArg = 0, 1, 2
		}
		p, _, err := pathAt(dirArg, pathArg, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Chmod(p, uint32(arg(modeArg)))
	case 76: // truncate(path, len)
		p, _, err := pathAt(-1, 0, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Truncate(p, int64(arg(1)))
	case 285: // fallocate(h, mode, off, len)
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		return 0, unix.Fallocate(f.fd, uint32(arg(1)), int64(arg(2)), int64(arg(3)))
	case 77, 74, 75, 91: // ftruncate, fsync, fdatasync, fchmod
		f, err := file(0)
		if err != nil {
			return 0, err
		}
		switch nr {
		case 77:
			return 0, unix.Ftruncate(f.fd, int64(arg(1)))
		case 74:
			return 0, unix.Fsync(f.fd)
		case 75:
			return 0, unix.Fdatasync(f.fd)
		default:
			return 0, unix.Fchmod(f.fd, uint32(arg(1)))
		}
	case 88, 266: // symlink(target, path), symlinkat(target, dirfd, path)
		target, err := str(0)
		if err != nil {
			return 0, unix.EFAULT
		}
		dirArg, pathArg := -1, 1
		if nr == 266 {
			dirArg, pathArg = 1, 2
		}
		p, _, err := pathAt(dirArg, pathArg, true)
		if err != nil {
			return 0, err
		}
		return 0, unix.Symlink(target, p)
	case 86, 265: // link(old, new), linkat(olddir, old, newdir, new, flags)
		var a, b string
		var err error
		if nr == 86 {
			if a, _, err = pathAt(-1, 0, true); err == nil {
				b, _, err = pathAt(-1, 1, true)
			}
		} else {
			if a, _, err = pathAt(0, 1, true); err == nil {
				b, _, err = pathAt(2, 3, true)
			}
		}
		if err != nil {
			return 0, err
		}
		return 0, unix.Link(a, b)
	case 280: // utimensat(dirfd, path, times, flags)
		var ts []unix.Timespec
		if arg(2) != 0 {
			raw, err := m.readVirt(arg(2), 32)
			if err != nil {
				return 0, unix.EFAULT
			}
			ts = unsafe.Slice((*unix.Timespec)(unsafe.Pointer(&raw[0])), 2)
		}
		if arg(1) == 0 { // futimens(fd, times)
			f, err := file(0)
			if err != nil {
				return 0, err
			}
			if ts == nil {
				ts = []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}
			}
			return 0, unix.UtimesNanoAt(f.fd, "", ts, unix.AT_EMPTY_PATH)
		}
		p, _, err := pathAt(0, 1, true)
		if err != nil {
			return 0, err
		}
		if ts == nil {
			ts = []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}
		}
		return 0, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, int(arg(3)))
	case 92, 94, 260: // chown, lchown, fchownat: as a non-root owner would see
		return 0, unix.EPERM
	case 79: // getcwd(buf, size)
		b := append([]byte(h.cwd), 0)
		if uint64(len(b)) > arg(1) {
			return 0, unix.ERANGE
		}
		if err := m.writeVirt(arg(0), b); err != nil {
			return 0, unix.EFAULT
		}
		return int64(len(b)), nil
	case 80, 81: // chdir(path), fchdir(h)
		var guest, p string
		if nr == 80 {
			g, err := str(0)
			if err != nil {
				return 0, unix.EFAULT
			}
			if p, _, err = h.resolve(-100, g, false); err != nil {
				return 0, err
			}
			if !path.IsAbs(g) {
				g = path.Join(h.cwd, g)
			}
			guest = path.Clean(g)
		} else {
			f, err := file(0)
			if err != nil {
				return 0, err
			}
			guest = f.guest
			p = fmt.Sprintf("/proc/self/fd/%d", f.fd)
		}
		st, err := os.Stat(p)
		if err != nil {
			return 0, unix.ENOENT
		}
		if !st.IsDir() {
			return 0, unix.ENOTDIR
		}
		h.cwd = guest
		return 0, nil
	}
	return 0, unix.ENOSYS
}

// readString reads a NUL-terminated guest string (at most 4 KiB).
func (m *machine) readString(va uint64) (string, error) {
	var out []byte
	for len(out) < 4096 {
		n := uint64(4096 - va&4095)
		b, err := m.readVirt(va, n)
		if err != nil {
			return "", err
		}
		if i := strings.IndexByte(string(b), 0); i >= 0 {
			return string(append(out, b[:i]...)), nil
		}
		out = append(out, b...)
		va += n
	}
	return "", unix.ENAMETOOLONG
}

// writeVirt copies b into guest-virtual memory.
func (m *machine) writeVirt(va uint64, b []byte) error {
	for len(b) > 0 {
		pa, size, ok := m.translate(va)
		if !ok {
			return fmt.Errorf("address %#x not mapped", va)
		}
		chunk := min(size-va&(size-1), uint64(len(b)))
		if pa+chunk > uint64(len(m.mem)) {
			return fmt.Errorf("address %#x maps outside RAM", va)
		}
		copy(m.mem[pa:pa+chunk], b[:chunk])
		b = b[chunk:]
		va += chunk
	}
	return nil
}
