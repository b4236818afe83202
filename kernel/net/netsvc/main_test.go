package main

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// TestNewStack: the stack the service starts with has loopback routed.
// (The service itself runs only inside an image: vmm's socket tests.)
func TestNewStack(t *testing.T) {
	st, err := newStack()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.FindRoute(1, tcpip.Address{}, tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), 0x800, false); err != nil {
		t.Fatalf("no route to 127.0.0.1: %v", err)
	}
}
