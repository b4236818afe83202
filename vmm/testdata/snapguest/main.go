// Command snapguest exercises kapi snapshots inside the image (run by
// vmm's TestSnapshotImage): exactness under concurrent writers with
// nested snapshots ("check"), and bad input ("bad").
package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cumulusdb/cumulus/bench/snapshot/workload"
	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/unikernel"
)

func main() {
	k, err := kapi.Default()
	if err != nil || k.Name() != "unikernel" {
		fmt.Println("not in the image:", err)
		os.Exit(2)
	}
	var fail error
	switch os.Args[1] {
	case "check":
		iters, _ := strconv.Atoi(os.Args[2])
		a, err := workload.NewArea(k, 64<<20)
		if err != nil {
			fail = err
			break
		}
		fail = workload.Check(a, workload.CheckOptions{Writers: 2, Iterations: iters, Log: func(f string, args ...any) {
			fmt.Printf(f+"\n", args...)
		}})
	case "bad":
		fail = bad(k)
	}
	c, _ := unikernel.SnapshotStats()
	fmt.Printf("counters %+v\n", c)
	if fail != nil {
		fmt.Println("FAIL:", fail)
		os.Exit(1)
	}
	fmt.Println("ok")
}

func expect(err error, errno unix.Errno, what string) error {
	if !errors.Is(err, errno) {
		return fmt.Errorf("%s: got %v, want %v", what, err, errno)
	}
	fmt.Printf("%s: %v\n", what, err)
	return nil
}

func bad(k kapi.Kernel) error {
	m := k.Memory()
	r, err := m.Reserve(16<<20, 2<<20)
	if err != nil {
		return err
	}
	if err := expect(snapErr(k, r.Mem[:8<<20]), unix.EFAULT, "unmapped range"); err != nil {
		return err
	}
	if err := m.Allocate(r, 0, 8<<20); err != nil {
		return err
	}
	if err := expect(snapErr(k, r.Mem[:16<<20]), unix.EFAULT, "partly mapped range"); err != nil {
		return err
	}
	if err := expect(snapErr(k, r.Mem[4096:4096+2<<20]), unix.EINVAL, "unaligned range"); err != nil {
		return err
	}
	w := workload.Words8(r.Mem[:8<<20])
	for i := range w {
		w[i] = uint64(i)
	}
	free0 := frames(k)
	for round := 0; round < 50; round++ {
		v, err := kapi.Snapshot(k, r.Mem[:8<<20])
		if err != nil {
			return err
		}
		if round == 0 {
			if err := expect(snapErr(k, v.Mem[:2<<20]), unix.EBUSY, "snapshot of a view"); err != nil {
				return err
			}
			if err := expect(unix.Munmap(v.Mem), unix.EINVAL, "munmap of a view"); err != nil {
				return err
			}
		}
		vw := workload.Words8(v.Mem)
		if round%2 == 0 {
			// Privatising part of the source ahead of the writes
			// (PrepareWrite: copies without faults) keeps the view.
			before := workload.Sum(vw)
			if err := kapi.PrepareWrite(k, r.Mem[:4<<20]); err != nil {
				return err
			}
			if after := workload.Sum(vw); after != before || workload.Sum(w) != before {
				return fmt.Errorf("round %d: PrepareWrite changed the view (%d, want %d) or the source (%d)", round, after, before, workload.Sum(w))
			}
		}
		// Writes on both sides stay on their side.
		i := (round * 7919) % len(w)
		w[i] += 1 << 40
		vw[(i+1)%len(vw)] += 1 << 41
		if vw[i] != w[i]-1<<40 || w[(i+1)%len(w)] != vw[(i+1)%len(vw)]-1<<41 {
			return fmt.Errorf("round %d: a write crossed between snapshot and source", round)
		}
		if err := kapi.ReleaseSnapshot(k, v); err != nil {
			return err
		}
		if err := kapi.ReleaseSnapshot(k, v); !errors.Is(err, kapi.ErrSnapshotReleased) {
			return fmt.Errorf("second release: %v", err)
		}
	}
	// The source is private again after the last release, and no frames
	// leaked (a few page tables may stay allocated).
	if free1 := frames(k); free1+8<<20 < free0 {
		return fmt.Errorf("frames leaked: %d bytes free before, %d after", free0, free1)
	}
	// munmap of a source with a live snapshot keeps the snapshot intact.
	v, err := kapi.Snapshot(k, r.Mem[:8<<20])
	if err != nil {
		return err
	}
	want := workload.Sum(w)
	if err := m.Discard(r, 0, 8<<20); err != nil {
		return err
	}
	if got := workload.Sum(workload.Words8(v.Mem)); got != want || workload.Sum(w) != 0 {
		return fmt.Errorf("discarding the source changed the snapshot (%d, want %d) or left data (%d)", got, want, workload.Sum(w))
	}
	fmt.Println("discard of the source: snapshot intact")
	return kapi.ReleaseSnapshot(k, v)
}

func snapErr(k kapi.Kernel, b []byte) error {
	v, err := kapi.Snapshot(k, b)
	if err == nil {
		kapi.ReleaseSnapshot(k, v)
		return fmt.Errorf("snapshot of %p+%d succeeded", unsafe.Pointer(&b[0]), len(b))
	}
	return err
}

func frames(k kapi.Kernel) uint64 {
	f, _ := kapi.AsFrames(k)
	return f.FreePhysMem()
}
