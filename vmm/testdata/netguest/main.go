// Command netguest exercises Go's net package inside an image: its
// sockets are served by the image's network service (gVisor's stack).
//
//	netguest loopback   TCP echo and HTTP over 127.0.0.1, many connections
//	netguest serve      HTTP on :80 and TCP echo on :7 until GET /quit
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netguest loopback|serve")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "loopback":
		err = loopback()
	case "serve":
		err = serve()
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netguest: %v\n", err)
		os.Exit(1)
	}
}

func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func loopback() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	go echo(l)
	addr := l.Addr().String()
	// Many connections at once, each with several round trips and a
	// payload larger than one segment.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errs <- fmt.Errorf("dial: %w", err)
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for i := 0; i < 20; i++ {
				msg := fmt.Sprintf("%d-%d-%s\n", g, i, strings.Repeat("x", 100*i))
				if _, err := io.WriteString(c, msg); err != nil {
					errs <- fmt.Errorf("write: %w", err)
					return
				}
				got, err := r.ReadString('\n')
				if err != nil || got != msg {
					errs <- fmt.Errorf("echo %d-%d: %q, %v", g, i, got[:min(len(got), 20)], err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	fmt.Println("ok echo")

	// A bulk transfer with half-close.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	payload := make([]byte, 4<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	c.Close()
	if err != nil || len(back) != len(payload) || string(back) != string(payload) {
		return fmt.Errorf("bulk: %d of %d bytes back, %v", len(back), len(payload), err)
	}
	fmt.Println("ok bulk")

	// HTTP.
	hl, err := net.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		return err
	}
	go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	for i := 0; i < 10; i++ {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:8080/n%d", i))
		if err != nil {
			return fmt.Errorf("http: %w", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != fmt.Sprintf("hello /n%d", i) {
			return fmt.Errorf("http body %q", body)
		}
	}
	fmt.Println("ok http")

	// Errors look like Linux's.
	if _, err := net.DialTimeout("tcp", "127.0.0.1:1", time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
		return fmt.Errorf("dial to a closed port: %v, want connection refused", err)
	}
	if _, err := net.Listen("tcp", addr); err == nil || !strings.Contains(err.Error(), "in use") {
		return fmt.Errorf("listen on a used port: %v, want address in use", err)
	}
	fmt.Println("ok errors")

	// Bad pointers get EFAULT from the kernel, and the network service
	// keeps serving.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	rc, _ := c2.(*net.TCPConn).SyscallConn()
	var rerr, werr syscall.Errno
	rc.Control(func(fd uintptr) {
		_, _, rerr = syscall.Syscall(syscall.SYS_READ, fd, 0x10, 64)
		_, _, werr = syscall.Syscall(syscall.SYS_WRITE, fd, 0x10, 64)
	})
	if rerr != syscall.EFAULT || werr != syscall.EFAULT {
		return fmt.Errorf("read/write from address 0x10: %v, %v, want EFAULT", rerr, werr)
	}
	s, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if e != 0 {
		return fmt.Errorf("socket: %v", e)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_CONNECT, s, 0x20, 16); e != syscall.EFAULT {
		return fmt.Errorf("connect to a sockaddr at 0x20: %v, want EFAULT", e)
	}
	syscall.Close(int(s))
	io.WriteString(c2, "still here\n")
	if got, err := bufio.NewReader(c2).ReadString('\n'); err != nil || got != "still here\n" {
		return fmt.Errorf("echo after bad calls: %q, %v", got, err)
	}
	c2.Close()
	fmt.Println("ok efault")
	return nil
}

func serve() error {
	el, err := net.Listen("tcp", ":7")
	if err != nil {
		return err
	}
	go echo(el)
	hl, err := net.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	quit := make(chan struct{})
	var once sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the image: %s\n", r.URL.Path)
	})
	mux.HandleFunc("/quit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "bye")
		once.Do(func() { close(quit) })
	})
	go http.Serve(hl, mux)
	fmt.Println("listening")
	<-quit
	time.Sleep(100 * time.Millisecond) // let the reply go out
	fmt.Println("ok serve")
	return nil
}
