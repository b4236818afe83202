package mm

// VMAs is the set of address ranges the program holds (reserved or
// committed), kept sorted and coalesced in a fixed array so that trap
// context never allocates. Invariant: areas[i].End < areas[i+1].Start
// (touching areas are merged).
type VMAs struct {
	n     int
	areas [MaxVMAs]Area
}

// MaxVMAs bounds the number of disjoint areas. The Go runtime reserves in
// large aligned pieces that coalesce, so a few hundred suffice.
const MaxVMAs = 1024

// Area is one half-open range [Start, End).
type Area struct{ Start, End uintptr }

// Len is the number of disjoint areas.
func (v *VMAs) Len() int { return v.n }

// At returns area i.
func (v *VMAs) At(i int) Area { return v.areas[i] }

// Free reports whether [start, end) overlaps no area.
func (v *VMAs) Free(start, end uintptr) bool {
	i := v.search(start)
	return i >= v.n || v.areas[i].Start >= end
}

// search returns the first area whose End > addr.
func (v *VMAs) search(addr uintptr) int {
	lo, hi := 0, v.n
	for lo < hi {
		m := (lo + hi) / 2
		if v.areas[m].End <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Find returns the index of the area containing addr, or -1.
func (v *VMAs) Find(addr uintptr) int {
	i := v.search(addr)
	if i < v.n && v.areas[i].Start <= addr {
		return i
	}
	return -1
}

// Insert adds [start, end), merging with overlapping or touching areas.
// It reports false if the table is full.
func (v *VMAs) Insert(start, end uintptr) bool {
	i := v.search(start)
	if i > 0 && v.areas[i-1].End == start {
		i--
	}
	j := i
	for j < v.n && v.areas[j].Start <= end {
		if v.areas[j].Start < start {
			start = v.areas[j].Start
		}
		if v.areas[j].End > end {
			end = v.areas[j].End
		}
		j++
	}
	// areas[i:j] collapse into one.
	if i == j {
		if v.n == MaxVMAs {
			return false
		}
		copy(v.areas[i+1:v.n+1], v.areas[i:v.n])
		v.n++
	} else if j-i > 1 {
		copy(v.areas[i+1:], v.areas[j:v.n])
		v.n -= j - i - 1
	}
	v.areas[i] = Area{start, end}
	return true
}

// Remove deletes [start, end) from the set, splitting an area if needed.
// It reports false if a split needed a slot the table lacks.
func (v *VMAs) Remove(start, end uintptr) bool {
	i := v.search(start)
	for i < v.n && v.areas[i].Start < end {
		a := v.areas[i]
		switch {
		case a.Start < start && a.End > end: // split in two
			if v.n == MaxVMAs {
				return false
			}
			copy(v.areas[i+2:v.n+1], v.areas[i+1:v.n])
			v.n++
			v.areas[i] = Area{a.Start, start}
			v.areas[i+1] = Area{end, a.End}
			return true
		case a.Start < start:
			v.areas[i].End = start
			i++
		case a.End > end:
			v.areas[i].Start = end
			return true
		default:
			copy(v.areas[i:], v.areas[i+1:v.n])
			v.n--
		}
	}
	return true
}

// FindGap returns the highest aligned address a with [a, a+size) free and
// lo <= a, a+size <= hi, or 0 if none. Top-down placement keeps the
// program's anonymous mappings away from the hint ranges the Go runtime
// prefers for its heap (0xc000000000 upward).
func (v *VMAs) FindGap(size, align, lo, hi uintptr) uintptr {
	top := hi
	for i := v.n - 1; i >= -1; i-- {
		gapLo := lo
		if i >= 0 {
			if v.areas[i].Start >= top {
				continue
			}
			if v.areas[i].End > gapLo {
				gapLo = v.areas[i].End
			}
		}
		if top >= size {
			a := (top - size) &^ (align - 1)
			if a >= gapLo && a+size <= top {
				return a
			}
		}
		if i >= 0 {
			top = v.areas[i].Start
			if top <= lo {
				return 0
			}
		}
	}
	return 0
}
