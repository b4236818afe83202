package blk_test

import (
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/vmm/virtio"
	"github.com/cumulusdb/cumulus/vmm/virtio/blk"
)

// FuzzRequest sends arbitrary requests: any header, any number of
// descriptors with any lengths, directions and addresses (some outside
// memory). Every request must complete, with a valid status where the
// chain ends in a writable byte, and the device must keep serving.
func FuzzRequest(f *testing.F) {
	f.Add(uint32(blk.TIn), uint64(0), []byte{16, 0, 0, 2, 1, 0, 1, 2})
	f.Add(uint32(blk.TOut), uint64(2047), []byte{16, 0, 0, 4, 0, 1, 1, 2})
	f.Add(uint32(blk.TGetID), uint64(0), []byte{16, 0, 20, 2, 1, 2})
	f.Add(uint32(blk.TFlush), uint64(1<<63), []byte{8, 1, 1, 2})
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, layout []byte) {
		r := newRig(t, blk.Config{Path: filepath.Join(t.TempDir(), "d"), Size: 1 << 20})
		r.tr.SetPoll(-1)
		binary.LittleEndian.PutUint32(r.slice(r.hdr, 4), typ)
		binary.LittleEndian.PutUint64(r.slice(r.hdr+8, 8), sector)
		// layout: pairs (length in 512-byte units or bytes, flags).
		ids := r.q.TakeFree(8)
		n := min(len(layout)/2, 8)
		if n == 0 {
			return
		}
		for i := range n {
			ln := uint32(layout[2*i])
			fl := layout[2*i+1]
			if fl&4 != 0 {
				ln *= 512
			}
			addr := r.data + uint64(i)*64<<10
			if i == 0 && fl&8 == 0 {
				addr = r.hdr
			}
			if fl&16 != 0 {
				addr = 1 << 30 // outside memory
			}
			var flags uint16
			if fl&1 != 0 {
				flags |= virtio.DescFWrite
			}
			next := uint16(0)
			if i+1 < n {
				flags |= virtio.DescFNext
				next = ids[i+1]
			}
			r.q.WriteDesc(ids[i], addr, ln, flags, next)
		}
		r.q.AddRaw(ids[0])
		r.q.Kick()
		u, err := r.q.Wait(1, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if u[0].ID != ids[0] {
			t.Fatalf("completion %+v", u[0])
		}
		if r.drv.Read(virtio.RegStatus)&virtio.StatusDeviceNeedsReset != 0 {
			t.Fatal("one bad request broke the device")
		}
		if s, _ := r.req(blk.TIn, 0, 512); s != blk.SOK {
			t.Fatal("device stopped serving")
		}
	})
}
