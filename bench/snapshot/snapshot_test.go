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
