package vrange

// Check verifies the invariants listed at the top of vrange.go. It is for
// tests: it must run at quiescence and it allocates (it is never called in
// trap context).

import (
	"fmt"
	"sort"
)

// Check returns nil if all invariants hold.
func (a *Allocator) Check() error {
	var all []span
	var listed, remainder int64
	sb := a.sbSize()
	for c := 0; c < a.cpus; c++ {
		p := &a.pcpu[c]
		for i := 0; i < p.n; i++ {
			s := p.free[i]
			if s.start >= s.end || s.start%PageSize != 0 || s.end%PageSize != 0 {
				return fmt.Errorf("cpu %d span %d [%#x,%#x) empty or unaligned", c, i, s.start, s.end)
			}
			if i > 0 && p.free[i-1].end >= s.start {
				return fmt.Errorf("cpu %d spans %d,%d unsorted, overlapping or touching", c, i-1, i)
			}
			if p.hasSB && s.end == p.cur && s.start >= p.base {
				return fmt.Errorf("cpu %d span %d touches the bump region", c, i)
			}
			listed += int64(s.end - s.start)
			all = append(all, s)
		}
		if got := p.listed.Load(); got != listedOf(p) {
			return fmt.Errorf("cpu %d listed counter %d, spans hold %d", c, got, listedOf(p))
		}
		if p.hasSB {
			if p.cur >= p.end || p.base > p.cur || p.end != p.base+sb {
				return fmt.Errorf("cpu %d bump region [%#x,%#x) base %#x", c, p.cur, p.end, p.base)
			}
			if p.cur < p.end {
				all = append(all, span{p.cur, p.end})
				remainder += int64(p.end - p.cur)
			}
			if !a.bitUsed(uint64((p.base - a.lo) >> a.sbShift)) {
				return fmt.Errorf("cpu %d current superblock %#x not marked used", c, p.base)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].start < all[j].start })
	for i, s := range all {
		if i > 0 && all[i-1].end > s.start {
			return fmt.Errorf("free spans [%#x,%#x) and [%#x,%#x) overlap", all[i-1].start, all[i-1].end, s.start, s.end)
		}
		if s.start < a.lo || s.end > a.hi {
			return fmt.Errorf("span [%#x,%#x) outside the window", s.start, s.end)
		}
		for b := uint64((s.start - a.lo) >> a.sbShift); b <= uint64((s.end-1-a.lo)>>a.sbShift); b++ {
			if !a.bitUsed(b) {
				return fmt.Errorf("span [%#x,%#x) in unused superblock %d", s.start, s.end, b)
			}
		}
	}
	st := a.Stats()
	if used, acc := int64(st.SuperblocksUsed)*int64(sb), st.AllocatedBytes+listed+remainder+st.DroppedBytes; used != acc {
		return fmt.Errorf("used superblocks hold %d bytes, accounted %d (allocated %d listed %d remainders %d dropped %d)",
			used, acc, st.AllocatedBytes, listed, remainder, st.DroppedBytes)
	}
	return nil
}

func listedOf(p *perCPU) int64 {
	var n int64
	for i := 0; i < p.n; i++ {
		n += int64(p.free[i].end - p.free[i].start)
	}
	return n
}
