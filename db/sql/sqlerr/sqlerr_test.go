package sqlerr

import (
	"errors"
	"fmt"
	"testing"
)

func TestCodeThroughWrapping(t *testing.T) {
	e := New(UndefinedTable, "relation %q does not exist", "t")
	wrapped := fmt.Errorf("exec: %w", e)
	if got := Code(wrapped); got != UndefinedTable {
		t.Fatalf("Code = %s, want %s", got, UndefinedTable)
	}
	if got := Code(errors.New("plain")); got != Internal {
		t.Fatalf("Code(plain) = %s, want %s", got, Internal)
	}
	if As(errors.New("x")).Message != "x" {
		t.Fatal("As lost the message")
	}
	cause := errors.New("disk")
	w := Wrap(DataException, cause, "copy")
	if !errors.Is(w, cause) || w.Error() != "copy: disk" {
		t.Fatalf("Wrap: %v", w)
	}
}
