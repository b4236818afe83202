package snapshot

import (
	"strings"
	"testing"
)

// TestTable: the headline ratios and the area size reach the table. (The
// measurement itself boots images and forks: `cumulus bench snapshot`.)
func TestTable(t *testing.T) {
	r := Report{SizeBytes: 64 << 20, Threads: 1, CPUs: 2, ForkOverImageCreate: 12, ImageDuringOverNone: 0.5}
	tab := r.Table()
	for _, want := range []string{"64 MiB area", "fork() / image = 12x", "image 0.50"} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
}

// TestMedianPoint: the sweep's medians are taken field by field.
func TestMedianPoint(t *testing.T) {
	p := medianPoint([]SweepPoint{{Hot: 1, Image: 0.1, Fork: 0.9}, {Hot: 1, Image: 0.3, Fork: 0.1}, {Hot: 1, Image: 0.2, Fork: 0.5}})
	if p.Image != 0.2 || p.Fork != 0.5 || p.Hot != 1 {
		t.Errorf("median point %+v", p)
	}
	if q := medianPoint([]SweepPoint{{Image: 0.2}, {Image: 0.4}}); q.Image < 0.299 || q.Image > 0.301 {
		t.Errorf("median of two: %v", q.Image)
	}
}
