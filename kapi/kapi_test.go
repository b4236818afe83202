package kapi_test

import (
	"testing"

	"github.com/cumulusdb/cumulus/kapi"
)

type fakeKernel struct{ name string }

func (f fakeKernel) Name() string      { return f.name }
func (fakeKernel) Memory() kapi.Memory { return nil }
func (fakeKernel) OpenBlock(string, kapi.BlockOptions) (kapi.BlockDevice, error) {
	return nil, kapi.ErrUnsupported
}

func TestRegisterPriorityAndProbe(t *testing.T) {
	kapi.Register(fakeKernel{"low"}, -10, nil)
	kapi.Register(fakeKernel{"absent"}, 100, func() bool { return false })
	kapi.Register(fakeKernel{"high"}, 50, func() bool { return true })
	k, err := kapi.Default()
	if err != nil {
		t.Fatal(err)
	}
	if k.Name() != "high" {
		t.Fatalf("Default() = %q, want the highest-priority kernel whose probe succeeds", k.Name())
	}
	if _, err := kapi.Lookup("absent"); err != nil {
		t.Fatalf("Lookup of a registered kernel: %v", err)
	}
	if _, err := kapi.Lookup("nope"); err == nil {
		t.Fatal("Lookup of an unknown kernel succeeded")
	}
}

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{1, 4096, 3 * 4096, 10000} {
		b := kapi.AlignedBuffer(n, 4096)
		if len(b) != n || !kapi.Aligned(b, 4096) {
			t.Fatalf("AlignedBuffer(%d): len %d aligned %v", n, len(b), kapi.Aligned(b, 4096))
		}
	}
}

type preparingKernel struct {
	fakeKernel
	got []byte
}

func (p *preparingKernel) PrepareWrite(b []byte) error { p.got = b; return nil }

// TestPrepareWrite: kapi.PrepareWrite reaches a kernel that copies
// lazily and is a no-op elsewhere.
func TestPrepareWrite(t *testing.T) {
	b := make([]byte, 4096)
	if err := kapi.PrepareWrite(fakeKernel{"plain"}, b); err != nil {
		t.Fatalf("kernel without PrepareWrite: %v", err)
	}
	p := &preparingKernel{fakeKernel: fakeKernel{"lazy"}}
	if err := kapi.PrepareWrite(p, b); err != nil || len(p.got) != len(b) {
		t.Fatalf("PrepareWrite not passed on: %v, %d bytes", err, len(p.got))
	}
}
