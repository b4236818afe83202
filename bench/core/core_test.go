package core

import (
	"os"
	"strings"
	"testing"

	"github.com/cumulusdb/cumulus/vmm/kvm"
)

func TestParse(t *testing.T) {
	out := "noise\n{\"name\":\"frames-bulk-1\",\"ns_per_op\":12.5,\"ops\":100,\"free_ns_per_op\":3.25}\n"
	ns, ops, free, err := parse(out)
	if err != nil || ns != 12.5 || ops != 100 || free != 3.25 {
		t.Fatalf("parse: %v %v %v %v", ns, ops, free, err)
	}
	if _, _, _, err := parse("no json here"); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestTable(t *testing.T) {
	r := &Report{CPUs: 2, MemMiB: 1024, Rows: []Row{{Name: "getpid", LinuxNs: 200, ImageNs: 100, Ratio: 0.5}}}
	tab := r.Table()
	for _, want := range []string{"getpid", "200.0", "100.0", "0.50x"} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
}

// TestRunOne measures one benchmark on both sides, end to end.
func TestRunOne(t *testing.T) {
	if err := kvm.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but KVM is unavailable: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	rep, err := Run(Options{CPUs: 1, Only: []string{"time.Now"}, OutDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 || rep.Rows[0].LinuxNs <= 0 || rep.Rows[0].ImageNs <= 0 {
		t.Fatalf("rows: %+v", rep.Rows)
	}
}
