package main

import (
	"testing"

	"github.com/cumulusdb/cumulus/kernel"
)

// The entry table must hold every entry point the monitor looks up.
func TestEntriesLinked(t *testing.T) {
	if n := kernel.Keep(); n < 38 {
		t.Fatalf("only %d entry points kept", n)
	}
}
