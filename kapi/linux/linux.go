//go:build linux

// Package linux implements kapi for a Linux process. Importing it registers
// the implementation under the name "linux" with priority 0 and no probe,
// so it is the fallback whenever nothing better (the unikernel) claims the
// machine.
//
// What Linux cannot do, honestly stated:
//   - Resident is mincore(2), a system call per query (~1 µs here), not the
//     plain page-table load the unikernel offers; the batched form amortises
//     the call over many pages.
//   - Discard is madvise(MADV_DONTNEED): it drops frames and zero-fills on
//     the next touch, but the next touch costs a page fault and a zeroing.
//   - Allocate cannot hand out frames eagerly without touching them; ranges
//     are backed on first touch (MAP_NORESERVE), so running out of memory
//     shows up as the OOM killer, not as an error from Allocate.
//   - Block devices are files or /dev nodes behind the host kernel's block
//     layer: there are no submission queues the process can poll, only
//     pread/pwrite and fdatasync. O_DIRECT is used where the file system
//     allows it; elsewhere reads may be served from the page cache.
//   - Physical frames (kapi frames) and snapshots are not offered here yet.
package linux

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/kapi"
)

func init() { kapi.Register(Kernel{}, 0, nil) }

// Kernel is the Linux implementation of kapi.Kernel.
type Kernel struct{}

// Name implements kapi.Kernel.
func (Kernel) Name() string { return "linux" }

// Memory implements kapi.Kernel.
func (Kernel) Memory() kapi.Memory { return memory{} }

type memory struct{}

type mapping struct {
	base   unsafe.Pointer // start of the whole mmap, including alignment slack
	length uintptr
}

func (memory) PageSize() int { return os.Getpagesize() }

func (m memory) Reserve(size, align uintptr) (kapi.Region, error) {
	ps := uintptr(m.PageSize())
	if size == 0 || size%ps != 0 {
		return kapi.Region{}, fmt.Errorf("kapi/linux: reserve: size %d not a positive multiple of %d", size, ps)
	}
	if align < ps {
		align = ps
	}
	if align&(align-1) != 0 {
		return kapi.Region{}, fmt.Errorf("kapi/linux: reserve: alignment %d not a power of two", align)
	}
	total := size + align - ps
	p, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return kapi.Region{}, fmt.Errorf("kapi/linux: reserve %d bytes: %w", size, err)
	}
	skip := uintptr(0)
	if rem := uintptr(p) & (align - 1); rem != 0 {
		skip = align - rem
	}
	mem := unsafe.Slice((*byte)(unsafe.Add(p, skip)), size)
	return kapi.Region{Mem: mem, Handle: &mapping{base: p, length: total}}, nil
}

func (m memory) span(r kapi.Region, off, length uintptr) ([]byte, error) {
	ps := uintptr(m.PageSize())
	if off%ps != 0 || length%ps != 0 || off+length > r.Len() || off+length < off {
		return nil, fmt.Errorf("kapi/linux: range [%d,+%d) not page-aligned inside region of %d bytes", off, length, r.Len())
	}
	return r.Mem[off : off+length], nil
}

func (m memory) Allocate(r kapi.Region, off, length uintptr) error {
	b, err := m.span(r, off, length)
	if err != nil || len(b) == 0 {
		return err
	}
	if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return fmt.Errorf("kapi/linux: allocate: mprotect: %w", err)
	}
	return nil
}

func (m memory) Discard(r kapi.Region, off, length uintptr) error {
	b, err := m.span(r, off, length)
	if err != nil || len(b) == 0 {
		return err
	}
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("kapi/linux: discard: madvise: %w", err)
	}
	return nil
}

func (memory) Free(r kapi.Region) error {
	mp, ok := r.Handle.(*mapping)
	if !ok {
		return errors.New("kapi/linux: free: region not made by kapi/linux")
	}
	if err := unix.MunmapPtr(mp.base, mp.length); err != nil {
		return fmt.Errorf("kapi/linux: free: munmap: %w", err)
	}
	return nil
}

func (m memory) Resident(r kapi.Region, off uintptr) (bool, error) {
	var out [1]bool
	ps := uintptr(m.PageSize())
	if err := m.ResidentBatch(r, off&^(ps-1), out[:]); err != nil {
		return false, err
	}
	return out[0], nil
}

func (m memory) ResidentBatch(r kapi.Region, off uintptr, out []bool) error {
	ps := uintptr(m.PageSize())
	b, err := m.span(r, off, uintptr(len(out))*ps)
	if err != nil || len(b) == 0 {
		return err
	}
	vec := make([]byte, len(out))
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return fmt.Errorf("kapi/linux: resident: mincore: %w", errno)
	}
	for i, v := range vec {
		out[i] = v&1 != 0
	}
	return nil
}

func (memory) Stats() (kapi.MemStats, error) {
	var s kapi.MemStats
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return s, fmt.Errorf("kapi/linux: stats: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "MemTotal:":
			s.Total = v * 1024
		case "MemAvailable:":
			s.Available = v * 1024
		}
	}
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return s, fmt.Errorf("kapi/linux: stats: %w", err)
	}
	if fields := strings.Fields(string(statm)); len(fields) >= 2 {
		pages, _ := strconv.ParseUint(fields[1], 10, 64)
		s.Resident = pages * uint64(os.Getpagesize())
	}
	return s, nil
}
