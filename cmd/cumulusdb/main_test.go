package main

import (
	"fmt"
	"syscall"
	"testing"
)

func TestNoNetwork(t *testing.T) {
	if !noNetwork(fmt.Errorf("listen: %w", syscall.ENOSYS)) {
		t.Fatal("ENOSYS must count as no network")
	}
	if noNetwork(fmt.Errorf("listen: %w", syscall.EADDRINUSE)) {
		t.Fatal("an address in use is a real error")
	}
}
