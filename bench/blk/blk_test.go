package blk

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cumulusdb/cumulus/kapi"
	"github.com/cumulusdb/cumulus/kapi/linux"
)

// Every workload runs on a Linux file through kapi.BlockQueue.
func TestMeasureLinux(t *testing.T) {
	q, err := kapi.OpenBlockQueue(linux.Kernel{}, filepath.Join(t.TempDir(), "disk"), kapi.BlockOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Grow(16 << 20); err != nil {
		t.Fatal(err)
	}
	for _, w := range Workloads {
		r, err := Measure(q, w, q.Size(), 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if r.Ops == 0 || r.IOPS <= 0 || r.Bytes != int64(r.Ops)*int64(w.Size) {
			t.Fatalf("%s: %+v", w.Name, r)
		}
	}
}

func TestTable(t *testing.T) {
	r := &Report{CPUs: 2, SizeMiB: 512, Seconds: 3, Rows: []Row{{Name: "randread-4k-qd32", LinuxIOPS: 1000, ImageIOPS: 1500, Ratio: 1.5}}}
	if s := r.Table(); !strings.Contains(s, "randread-4k-qd32") || !strings.Contains(s, "1.50x") {
		t.Fatal(s)
	}
	if _, err := Lookup("nope"); err == nil {
		t.Fatal("unknown workload accepted")
	}
}
