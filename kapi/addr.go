package kapi

import "unsafe"

// addrOf returns the address of b's first byte, for alignment checks only.
func addrOf(b []byte) uintptr {
	if cap(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
