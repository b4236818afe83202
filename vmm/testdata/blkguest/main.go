// Command blkguest exercises the virtio-blk disk inside an image through
// kapi (vmm/blk_image_test.go boots it): each argument names a step; it
// prints "ok STEP" per step and exits non-zero on the first failure.
//
//	write=SEED    random 4 KiB and 64 KiB patterns through the queue, many
//	              in flight, then a flush
//	verify=SEED   read them back (after a reboot) and compare
//	sync=SEED     the synchronous BlockDevice: unaligned writes and reads
//	              from Go heap buffers, Grow past the capacity (ENOSPC)
//	syncverify=SEED  the sync step's data after a reboot
//	readonly      writes fail with EROFS, reads work
//
// The patterns are a function of (seed, block), see Pattern, which the
// host side of the test repeats to check the disk file itself.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/cumulusdb/cumulus/vmm/internal/diskpattern"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/kapi"
	_ "github.com/cumulusdb/cumulus/kapi/linux"
	_ "github.com/cumulusdb/cumulus/kapi/unikernel"
)

func main() {
	for _, a := range os.Args[1:] {
		name, arg, _ := strings.Cut(a, "=")
		seed, _ := strconv.ParseUint(arg, 10, 64)
		if err := run(name, seed); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Println("ok", name)
	}
}

func openQueue() (kapi.BlockQueue, error) {
	k, err := kapi.Default()
	if err != nil {
		return nil, err
	}
	return kapi.OpenBlockQueue(k, diskPath(k), kapi.BlockOptions{})
}

// diskPath is /dev/vda in the image; on Linux (a check of this program
// itself) BLKGUEST_DEV names a file.
func diskPath(k kapi.Kernel) string {
	if p := os.Getenv("BLKGUEST_DEV"); p != "" && k.Name() == "linux" {
		return p
	}
	return "/dev/vda"
}

type job struct {
	off  int64
	blk  uint64
	size int
}

func jobs(q kapi.BlockQueue, seed uint64) []job {
	single, runs := diskpattern.Blocks(seed, int(q.Size()/4096))
	var js []job
	for _, b := range runs {
		js = append(js, job{int64(b) * 4096, b, 64 << 10})
	}
	for _, b := range single {
		js = append(js, job{int64(b) * 4096, b, 4096})
	}
	return js
}

// runJobs pushes all jobs through q with as many in flight as it takes.
func runJobs(q kapi.BlockQueue, js []job, op kapi.BlockOp, seed uint64) error {
	bufs := make([][]byte, len(js))
	for i, j := range js {
		b, err := q.AllocBuffer(j.size)
		if err != nil {
			return err
		}
		bufs[i] = b[:j.size]
		if op == kapi.BlockWrite {
			for k := 0; k < j.size/4096; k++ {
				diskpattern.Pattern(bufs[i][k*4096:(k+1)*4096], seed, j.blk+uint64(k))
			}
		} else {
			clear(bufs[i])
		}
	}
	reqs := make([]kapi.BlockRequest, len(js))
	for i, j := range js {
		reqs[i] = kapi.BlockRequest{Op: op, Off: j.off, Buf: bufs[i], Tag: uint64(i)}
	}
	out := make([]kapi.BlockCompletion, 64)
	done, sub, maxIn := 0, 0, 0
	deadline := time.Now().Add(2 * time.Minute)
	for done < len(reqs) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d requests done after 2 minutes", done, len(reqs))
		}
		if sub < len(reqs) {
			n, err := q.Submit(reqs[sub:])
			if err != nil {
				return err
			}
			sub += n
		}
		maxIn = max(maxIn, sub-done)
		n := q.Wait(out, time.Second)
		for _, c := range out[:n] {
			if c.Err != nil {
				return fmt.Errorf("request %d: %w", c.Tag, c.Err)
			}
			if c.N != len(reqs[c.Tag].Buf) {
				return fmt.Errorf("request %d: %d bytes of %d", c.Tag, c.N, len(reqs[c.Tag].Buf))
			}
		}
		done += n
	}
	if maxIn < 8 {
		return fmt.Errorf("only %d requests were ever in flight", maxIn)
	}
	if op == kapi.BlockRead {
		want := make([]byte, 4096)
		for i, j := range js {
			for k := 0; k < j.size/4096; k++ {
				diskpattern.Pattern(want, seed, j.blk+uint64(k))
				if !bytes.Equal(bufs[i][k*4096:(k+1)*4096], want) {
					return fmt.Errorf("block %d differs", j.blk+uint64(k))
				}
			}
		}
	}
	for _, b := range bufs {
		if err := q.FreeBuffer(b); err != nil {
			return err
		}
	}
	return nil
}

// The sync step's region: the last 1 MiB of the disk.
func syncData(seed uint64, size int64) (off int64, data []byte) {
	data = make([]byte, 300_001)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	return size - 1<<20 + 123, data
}

func k0() string {
	k, _ := kapi.Default()
	return k.Name()
}

func run(name string, seed uint64) error {
	switch name {
	case "write", "verify":
		q, err := openQueue()
		if err != nil {
			return err
		}
		defer q.Close()
		if _, err := openQueue(); k0() == "unikernel" && !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("second open: %v, want EBUSY", err)
		}
		js := jobs(q, seed)
		if name == "verify" {
			return runJobs(q, js, kapi.BlockRead, seed)
		}
		if err := runJobs(q, js, kapi.BlockWrite, seed); err != nil {
			return err
		}
		if n, err := q.Submit([]kapi.BlockRequest{{Op: kapi.BlockFlush, Tag: 1}}); n != 1 || err != nil {
			return fmt.Errorf("flush submit: %d %v", n, err)
		}
		out := make([]kapi.BlockCompletion, 1)
		if n := q.Wait(out, time.Minute); n != 1 || out[0].Err != nil {
			return fmt.Errorf("flush: %d %v", n, out[0].Err)
		}
	case "sync", "syncverify":
		k, err := kapi.Default()
		if err != nil {
			return err
		}
		path := diskPath(k)
		if path == "/dev/vda" {
			path = "vda" // the short form works too
		}
		dev, err := k.OpenBlock(path, kapi.BlockOptions{})
		if err != nil {
			return err
		}
		defer dev.Close()
		off, data := syncData(seed, dev.Size())
		if name == "sync" {
			if err := dev.Grow(dev.Size()); err != nil {
				return fmt.Errorf("grow to the capacity: %v", err)
			}
			if k.Name() != "unikernel" {
				// A Linux file grows; only a disk has a capacity.
			} else if err := dev.Grow(dev.Size() + 4096); !errors.Is(err, syscall.ENOSPC) {
				return fmt.Errorf("grow past the capacity: %v, want ENOSPC", err)
			}
			if n, err := dev.WriteAt(data, off); n != len(data) || err != nil {
				return fmt.Errorf("write: %d %v", n, err)
			}
			if err := dev.Flush(); err != nil {
				return err
			}
		}
		got := make([]byte, len(data))
		if n, err := dev.ReadAt(got, off); n != len(data) || err != nil {
			return fmt.Errorf("read: %d %v", n, err)
		}
		if !bytes.Equal(got, data) {
			return fmt.Errorf("sync data differs")
		}
	case "readonly":
		q, err := openQueue()
		if err != nil {
			return err
		}
		defer q.Close()
		b, _ := q.AllocBuffer(4096)
		if _, err := q.Submit([]kapi.BlockRequest{{Op: kapi.BlockWrite, Off: 0, Buf: b[:4096]}}); !errors.Is(err, syscall.EROFS) {
			return fmt.Errorf("write to a read-only disk: %v, want EROFS", err)
		}
		if n, err := q.Submit([]kapi.BlockRequest{{Op: kapi.BlockRead, Off: 0, Buf: b[:4096], Tag: 1}}); n != 1 || err != nil {
			return fmt.Errorf("read: %d %v", n, err)
		}
		out := make([]kapi.BlockCompletion, 1)
		if n := q.Wait(out, time.Minute); n != 1 || out[0].Err != nil {
			return fmt.Errorf("read: %d %v", n, out[0].Err)
		}
	default:
		return fmt.Errorf("unknown step %q", name)
	}
	return nil
}
