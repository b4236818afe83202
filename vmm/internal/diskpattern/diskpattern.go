// Package diskpattern is the data the virtio-blk image test writes: the
// guest (testdata/blkguest) writes and verifies it, the host test checks
// the disk file against it.
package diskpattern

import "math/rand/v2"

// Pattern fills b with the contents of 4 KiB block blk for seed.
func Pattern(b []byte, seed, blk uint64) {
	x := seed*0x9e3779b97f4a7c15 ^ blk*0xbf58476d1ce4e5b9 | 1
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for j := 0; j < 8; j++ {
			b[i+j] = byte(x >> (8 * j))
		}
	}
}

// Blocks returns the distinct blocks written for seed on a disk of n
// blocks, and which start a 64 KiB (16-block) run. The last 1 MiB is the
// sync step's.
func Blocks(seed uint64, n int) (single []uint64, runs []uint64) {
	n -= 256
	rng := rand.New(rand.NewPCG(seed, 99))
	used := map[uint64]bool{}
	for len(runs) < 40 {
		b := uint64(rng.IntN(n/16)) * 16
		if !used[b] {
			for i := uint64(0); i < 16; i++ {
				used[b+i] = true
			}
			runs = append(runs, b)
		}
	}
	for len(single) < 1500 {
		b := uint64(rng.IntN(n))
		if !used[b] {
			used[b] = true
			single = append(single, b)
		}
	}
	return single, runs
}
