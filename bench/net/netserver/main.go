// Command netserver is the network benchmark's server (bench/net). It runs
// unchanged as a Linux process and inside an image:
//
//	netserver -listen ADDR
//
// Each connection starts with one line naming its job:
//
//	rr SIZE      echo messages of SIZE bytes until EOF (request/response)
//	bulk         read until EOF, then reply with the byte count as a line
//	quit         exit 0 (the benchmark's way to stop an image)
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
)

func main() {
	listen := flag.String("listen", ":7", "address to listen on")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netserver:", err)
		os.Exit(1)
	}
	fmt.Println("netserver: listening on", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netserver:", err)
			os.Exit(1)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	job := strings.Fields(line)
	if len(job) == 0 {
		return
	}
	switch job[0] {
	case "rr":
		size := 64
		if len(job) > 1 {
			size, _ = strconv.Atoi(job[1])
		}
		buf := make([]byte, max(size, 1))
		for {
			if _, err := io.ReadFull(r, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case "bulk":
		n, _ := io.Copy(io.Discard, r)
		fmt.Fprintf(c, "%d\n", n)
	case "quit":
		fmt.Fprintln(c, "bye")
		c.Close()
		os.Exit(0)
	}
}
