// Package blk is a virtio-blk device model (virtio 1.x §5.2) on a host
// file.
//
// Design: one request queue. A dispatcher goroutine takes chains from the
// avail ring (polling, see virtio.Queue.Wait) and hands them to a pool of
// workers, so several requests are in flight at once; each worker does
// its I/O with preadv/pwritev straight into the guest's buffers (no copy)
// and completes its chain. Requests complete out of order, as virtio
// allows.
//
// Invariants:
//   - a FLUSH completes only after fdatasync of the host file returned:
//     every write completed before the flush was submitted is then on the
//     host's storage (the device offers VIRTIO_BLK_F_FLUSH, so the driver
//     treats it as a write-back cache);
//   - anything wrong with a request — a malformed chain, a sector range
//     past the capacity, a write to a read-only disk, a host I/O error
//     such as ENOSPC or EIO — completes it with VIRTIO_BLK_S_IOERR (or
//     UNSUPP for unknown types); nothing a guest sends panics the monitor;
//   - Close flushes the file, so a clean shutdown loses nothing.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/vmm/virtio"
)

// Feature bits (§5.2.3).
const (
	FSizeMax = 1 << 1
	FSegMax  = 1 << 2
	FRO      = 1 << 5
	FFlush   = 1 << 9
)

// Request types and status values (§5.2.6).
const (
	TIn    = 0
	TOut   = 1
	TFlush = 4
	TGetID = 8

	SOK     = 0
	SIOErr  = 1
	SUnsupp = 2

	SectorSize = 512
	HeaderSize = 16 // type u32, reserved u32, sector u64
	IDBytes    = 20 // VIRTIO_BLK_ID_BYTES
)

// Limits offered to the driver.
const (
	QueueSize = 256
	SegMax    = QueueSize - 2 // data segments: the header and status take two descriptors
	SizeMax   = 1 << 22       // bytes in one segment
)

// Backend is the storage behind the device. ReadAt and WriteAt transfer
// all of segs at offset off or fail.
type Backend interface {
	ReadAt(segs [][]byte, off int64) error
	WriteAt(segs [][]byte, off int64) error
	Sync() error
	Size() int64
	Close() error
}

// Config describes a disk.
type Config struct {
	Path     string
	Size     int64 // create the file with this size if missing (0: it must exist)
	ReadOnly bool
	ID       string // GET_ID answer (at most 20 bytes used; default: the file's base name)
	Workers  int    // requests in flight (default 4)
	Log      *slog.Logger
	// Backend replaces the file (tests); Path and Size are then ignored.
	Backend Backend
}

// Device is a virtio-blk device model.
type Device struct {
	cfg      Config
	be       Backend
	capacity uint64 // sectors
	config   [60]byte
	id       [IDBytes]byte

	stop chan struct{}
	wg   sync.WaitGroup

	requests, readBytes, writeBytes, flushes, errs atomic.Uint64
}

// Open opens (or creates) the disk.
func Open(cfg Config) (*Device, error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	be := cfg.Backend
	if be == nil {
		f, err := OpenFile(cfg.Path, cfg.Size, cfg.ReadOnly)
		if err != nil {
			return nil, err
		}
		be = f
	}
	d := &Device{cfg: cfg, be: be, capacity: uint64(be.Size()) / SectorSize}
	binary.LittleEndian.PutUint64(d.config[0:], d.capacity)
	binary.LittleEndian.PutUint32(d.config[8:], SizeMax)
	binary.LittleEndian.PutUint32(d.config[12:], SegMax)
	id := cfg.ID
	if id == "" {
		id = filepath.Base(cfg.Path)
	}
	copy(d.id[:], id)
	return d, nil
}

// Capacity is the disk's size in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

func (d *Device) ID() uint32 { return 2 }

func (d *Device) Features() uint64 {
	f := uint64(FSizeMax | FSegMax | FFlush)
	if d.cfg.ReadOnly {
		f |= FRO
	}
	return f
}

func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize} }

func (d *Device) ReadConfig(off uint64, data []byte) { virtio.ReadConfigBytes(d.config[:], off, data) }

// WriteConfig ignores writes: no writable field is offered
// (VIRTIO_BLK_F_CONFIG_WCE is not).
func (d *Device) WriteConfig(off uint64, data []byte) {}

// Counters implements virtio.Counters.
func (d *Device) Counters() virtio.Stats {
	return virtio.Stats{Requests: d.requests.Load(), ReadBytes: d.readBytes.Load(), WriteBytes: d.writeBytes.Load(),
		Flushes: d.flushes.Load(), Errors: d.errs.Load()}
}

// Start starts the dispatcher and the workers on the request queue.
func (d *Device) Start(features uint64, qs []*virtio.Queue) error {
	if len(qs) != 1 || qs[0] == nil {
		return errors.New("virtio-blk: request queue not set up")
	}
	q := qs[0]
	d.stop = make(chan struct{})
	work := make(chan *virtio.Chain, d.cfg.Workers)
	free := sync.Pool{New: func() any { return new(virtio.Chain) }}
	d.wg.Add(1 + d.cfg.Workers)
	go func() {
		defer d.wg.Done()
		defer close(work)
		for q.Wait(d.stop) {
			for {
				c := free.Get().(*virtio.Chain)
				ok, err := q.Next(c)
				if err != nil || !ok {
					free.Put(c)
					break
				}
				select {
				case work <- c:
				case <-d.stop:
					return
				}
			}
		}
	}()
	for range d.cfg.Workers {
		go func() {
			defer d.wg.Done()
			for c := range work {
				n := d.handle(c)
				q.Complete(c.Head, n)
				free.Put(c)
			}
		}()
	}
	return nil
}

// Stop stops the goroutines, letting requests already taken finish.
func (d *Device) Stop() {
	if d.stop == nil {
		return
	}
	close(d.stop)
	d.wg.Wait()
	d.stop = nil
}

// Close flushes and closes the backend.
func (d *Device) Close() error {
	d.Stop()
	var err error
	if !d.cfg.ReadOnly {
		if e := d.be.Sync(); e != nil {
			err = fmt.Errorf("virtio-blk: flush %s at close: %w", d.cfg.Path, e)
		}
	}
	if e := d.be.Close(); e != nil && err == nil {
		err = fmt.Errorf("virtio-blk: close %s: %w", d.cfg.Path, e)
	}
	return err
}

// handle serves one request and returns the bytes written into the
// chain's device-writable part (data read plus the status byte).
func (d *Device) handle(c *virtio.Chain) uint32 {
	d.requests.Add(1)
	status, n := d.serve(c)
	if status != SOK {
		d.errs.Add(1)
	}
	// The status byte is the last byte of the chain (§5.2.6).
	if len(c.Tail) == 0 {
		// Nowhere to report: the driver sent no status byte. Return the
		// chain with nothing written; the driver's bug, not ours.
		return 0
	}
	c.Tail[len(c.Tail)-1] = status
	return n + 1
}

func (d *Device) serve(c *virtio.Chain) (status byte, written uint32) {
	if c.Err != nil {
		d.cfg.Log.Warn("virtio-blk: malformed request", "disk", d.cfg.Path, "err", c.Err)
		return SIOErr, 0
	}
	var hdr [HeaderSize]byte
	if c.Gather(hdr[:], 0) != HeaderSize || len(c.Tail) == 0 {
		d.cfg.Log.Warn("virtio-blk: request without header or status byte", "disk", d.cfg.Path)
		return SIOErr, 0
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	// Data: readable bytes after the header; writable bytes before the
	// status byte.
	in := virtio.Sub(c.Writable, 0, c.WritableLen()-1)
	out := virtio.Sub(c.Readable, HeaderSize, -1)
	switch typ {
	case TIn, TOut:
		segs, n := in, c.WritableLen()-1
		if typ == TOut {
			segs, n = out, c.ReadableLen()-HeaderSize
			if d.cfg.ReadOnly {
				return SIOErr, 0
			}
		}
		if n%SectorSize != 0 || sector > d.capacity || uint64(n/SectorSize) > d.capacity-sector {
			d.cfg.Log.Warn("virtio-blk: request out of range", "disk", d.cfg.Path, "sector", sector, "bytes", n, "capacity", d.capacity)
			return SIOErr, 0
		}
		if n == 0 {
			return SOK, 0
		}
		off := int64(sector * SectorSize)
		if typ == TIn {
			if err := d.be.ReadAt(segs, off); err != nil {
				d.cfg.Log.Warn("virtio-blk: read failed", "disk", d.cfg.Path, "sector", sector, "err", err)
				return SIOErr, 0
			}
			d.readBytes.Add(uint64(n))
			return SOK, uint32(n)
		}
		if err := d.be.WriteAt(segs, off); err != nil {
			d.cfg.Log.Warn("virtio-blk: write failed", "disk", d.cfg.Path, "sector", sector, "err", err)
			return SIOErr, 0
		}
		d.writeBytes.Add(uint64(n))
		return SOK, 0
	case TFlush:
		d.flushes.Add(1)
		if d.cfg.ReadOnly {
			return SOK, 0
		}
		if err := d.be.Sync(); err != nil {
			d.cfg.Log.Warn("virtio-blk: flush failed", "disk", d.cfg.Path, "err", err)
			return SIOErr, 0
		}
		return SOK, 0
	case TGetID:
		k := 0
		for _, b := range in {
			k += copy(b, d.id[k:])
		}
		return SOK, uint32(k)
	}
	return SUnsupp, 0
}

// File is the Backend on a host file. Aligned transfers (the guest
// drivers' buffers come from page-aligned frames) go through a second
// descriptor opened with O_DIRECT, so the disk bypasses the host's page
// cache as a database expects (like QEMU's cache=none), and figures
// compare with a Linux process doing O_DIRECT; others go through the
// page cache, which Linux keeps coherent with direct I/O.
type File struct {
	f    *os.File
	fd   int
	dfd  int // O_DIRECT descriptor, or -1 where the file system refuses it
	size int64
}

// directAlign is the alignment O_DIRECT needs of addresses, lengths and
// offsets (the logical block size; 512 on the file systems we meet, 4096
// is safe everywhere and what our drivers produce).
const directAlign = 4096

func aligned(segs [][]byte, off int64) bool {
	if off%directAlign != 0 {
		return false
	}
	for _, s := range segs {
		if len(s)%directAlign != 0 || (len(s) > 0 && uintptr(unsafe.Pointer(&s[0]))%directAlign != 0) {
			return false
		}
	}
	return true
}

// OpenFile opens path for a disk, creating it with size bytes if it is
// missing and size > 0. The file is locked (shared when read-only) so two
// monitors never write one disk.
func OpenFile(path string, size int64, readOnly bool) (*File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, os.ErrNotExist) && size > 0 && !readOnly {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			if err = f.Truncate(size); err != nil {
				f.Close()
				os.Remove(path)
				return nil, fmt.Errorf("virtio-blk: size %s: %w", path, err)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: open disk: %w", err)
	}
	how := unix.LOCK_EX
	if readOnly {
		how = unix.LOCK_SH
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-blk: lock %s (in use by another monitor?): %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-blk: stat disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("virtio-blk: %s is not a regular file", path)
	}
	dflags := unix.O_RDWR
	if readOnly {
		dflags = unix.O_RDONLY
	}
	dfd, err := unix.Open(path, dflags|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		dfd = -1 // tmpfs and some others: buffered only
	}
	return &File{f: f, fd: int(f.Fd()), dfd: dfd, size: st.Size()}, nil
}

func (f *File) Size() int64 { return f.size }

// ReadAt reads all of segs; past the end of the file (a file shrunk
// behind our back) it reads zeros.
func (f *File) ReadAt(segs [][]byte, off int64) error {
	fd := f.fd
	if f.dfd >= 0 && aligned(segs, off) {
		fd = f.dfd
	}
	for len(segs) > 0 {
		n, err := unix.Preadv(fd, segs, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			for _, s := range segs {
				clear(s)
			}
			return nil
		}
		off += int64(n)
		segs = virtio.Sub(segs, n, -1)
	}
	return nil
}

func (f *File) WriteAt(segs [][]byte, off int64) error {
	fd := f.fd
	if f.dfd >= 0 && aligned(segs, off) {
		fd = f.dfd
	}
	for len(segs) > 0 {
		n, err := unix.Pwritev(fd, segs, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		off += int64(n)
		segs = virtio.Sub(segs, n, -1)
	}
	return nil
}

// Sync makes every completed write durable (fdatasync: the size never
// changes, so the metadata that matters is already there).
func (f *File) Sync() error {
	for {
		err := unix.Fdatasync(f.fd)
		if err != unix.EINTR {
			return err
		}
	}
}

func (f *File) Close() error {
	if f.dfd >= 0 {
		unix.Close(f.dfd)
	}
	return f.f.Close()
}
