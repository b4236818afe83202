//go:build linux

package linux

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
)

// blockSize is the alignment O_DIRECT needs on the file systems we use.
const blockSize = 4096

// OpenBlock implements kapi.Kernel. A regular file grows with Grow
// (fallocate, so later writes cannot hit ENOSPC); a block device node has a
// fixed size and Grow past it fails with ENOSPC.
func (Kernel) OpenBlock(path string, opts kapi.BlockOptions) (kapi.BlockDevice, error) {
	flags := os.O_RDWR | unix.O_CLOEXEC
	if opts.Create {
		flags |= os.O_CREATE
	}
	direct := !opts.Buffered
	var fd int
	var err error
	if direct {
		fd, err = unix.Open(path, flags|unix.O_DIRECT, 0o644)
		if errors.Is(err, unix.EINVAL) {
			direct = false // file system without O_DIRECT (tmpfs)
		}
	}
	if !direct {
		fd, err = unix.Open(path, flags, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("kapi/linux: open block %s: %w", path, err)
	}
	d := &device{f: os.NewFile(uintptr(fd), path), fd: fd, path: path, direct: direct}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.f.Close()
		return nil, fmt.Errorf("kapi/linux: stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		n, err := unix.IoctlGetInt(fd, unix.BLKGETSIZE64)
		if err != nil {
			d.f.Close()
			return nil, fmt.Errorf("kapi/linux: size of %s: %w", path, err)
		}
		d.size, d.fixed = int64(n), true
	} else {
		d.size = st.Size
	}
	return d, nil
}

type device struct {
	f      *os.File
	fd     int
	path   string
	direct bool
	fixed  bool // a block device node: Grow cannot extend it

	mu   sync.Mutex // guards size
	size int64
}

// Direct reports whether the device bypasses the page cache.
func (d *device) Direct() bool { return d.direct }

func (d *device) Name() string   { return d.path }
func (d *device) BlockSize() int { return blockSize }

func (d *device) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.size
}

func (d *device) Grow(size int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if size <= d.size {
		return nil
	}
	if d.fixed {
		return fmt.Errorf("kapi/linux: grow %s to %d bytes past its size %d: %w", d.path, size, d.size, unix.ENOSPC)
	}
	err := unix.Fallocate(d.fd, 0, d.size, size-d.size)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// No fallocate (some file systems): a sparse extension is all we can
		// do, and a later write may still find the disk full.
		err = unix.Ftruncate(d.fd, size)
	}
	if err != nil {
		return fmt.Errorf("kapi/linux: grow %s to %d bytes: %w", d.path, size, err)
	}
	d.size = size
	return nil
}

func (d *device) aligned(p []byte, off int64) bool {
	return !d.direct || (off%blockSize == 0 && len(p)%blockSize == 0 && kapi.Aligned(p, blockSize))
}

func (d *device) ReadAt(p []byte, off int64) (int, error) {
	if !d.aligned(p, off) {
		return d.bounce(p, off, false)
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("kapi/linux: read %s at %d: %w", d.path, off, err)
	}
	return n, nil
}

func (d *device) WriteAt(p []byte, off int64) (int, error) {
	if !d.aligned(p, off) {
		return d.bounce(p, off, true)
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("kapi/linux: write %s at %d: %w", d.path, off, err)
	}
	return n, nil
}

// bounce serves an unaligned request through an aligned buffer, with a
// read-modify-write for partial blocks. It is the slow path for metadata;
// the storage engine's page and log I/O is aligned.
func (d *device) bounce(p []byte, off int64, write bool) (int, error) {
	start := off &^ (blockSize - 1)
	end := (off + int64(len(p)) + blockSize - 1) &^ (blockSize - 1)
	buf := kapi.AlignedBuffer(int(end-start), blockSize)
	n, err := d.f.ReadAt(buf, start)
	if err != nil && !isEOF(err) {
		return 0, fmt.Errorf("kapi/linux: read %s at %d: %w", d.path, start, err)
	}
	if !write {
		avail := int64(n) - (off - start)
		if avail < 0 {
			avail = 0
		}
		c := copy(p, buf[off-start:off-start+min(avail, int64(len(p)))])
		if c < len(p) {
			return c, fmt.Errorf("kapi/linux: read %s at %d: short read", d.path, off)
		}
		return c, nil
	}
	copy(buf[off-start:], p)
	if _, err := d.f.WriteAt(buf, start); err != nil {
		return 0, fmt.Errorf("kapi/linux: write %s at %d: %w", d.path, start, err)
	}
	return len(p), nil
}

func (d *device) Flush() error {
	if err := unix.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("kapi/linux: flush %s: %w", d.path, err)
	}
	return nil
}

func (d *device) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("kapi/linux: close %s: %w", d.path, err)
	}
	return nil
}
