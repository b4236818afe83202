package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
)

// TestJobs: rr echoes fixed-size messages; bulk counts what it read.
func TestJobs(t *testing.T) {
	c, s := net.Pipe()
	go serve(s)
	fmt.Fprintf(c, "rr 4\n")
	for i := 0; i < 3; i++ {
		c.Write([]byte("ping"))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("rr: %q %v", b, err)
		}
	}
	c.Close()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if sc, err := l.Accept(); err == nil {
			serve(sc)
		}
	}()
	tc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	fmt.Fprintf(tc, "bulk\n%s", strings.Repeat("x", 1000))
	tc.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil || line != "1000\n" {
		t.Fatalf("bulk count %q, %v", line, err)
	}
}
