package main

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/cumulusdb/cumulus/bench/postgres"
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
)

// measureImage runs pgbench against CumulusDB inside the image: the
// server image boots under KVM with a fresh virtio disk (the database on
// /dev/vda, O_DIRECT-free host file, flushes are fdatasync) and its port
// published on the host's loopback; pgbench connects through the
// monitor's user-mode network.
func measureImage(pgbench, mode string, cfg config, dur time.Duration, disk string) (result, error) {
	root, err := build.ModuleRoot()
	if err != nil {
		return result{}, err
	}
	prog, err := build.Program(filepath.Join(root, "cmd", "cumulusdb"))
	if err != nil {
		return result{}, err
	}
	img, err := build.Image("cumulusdb", prog)
	if err != nil {
		return result{}, err
	}
	port, err := postgres.FreePort()
	if err != nil {
		return result{}, err
	}
	stop := make(chan struct{})
	var stderr strings.Builder
	done := make(chan error, 1)
	go func() {
		res, err := vmm.Run(img, vmm.Config{
			CPUs: 2, MemBytes: 3 << 30, Stop: stop,
			Args:   []string{"cumulusdb", "-device", "/dev/vda", "-listen", ":5432", "-trust", boot.GatewayIP + "/32"},
			Disks:  []vmm.Disk{{Path: disk, Size: 4 << 30}},
			Ports:  []vmm.PortForward{{HostAddr: "127.0.0.1", HostPort: port, GuestPort: 5432}},
			Stdout: io.Discard, Stderr: &stderr,
		})
		if err == nil && res.Reason != "stopped" {
			err = fmt.Errorf("image exited (%s, status %d): %s", res.Reason, res.ExitCode, stderr.String())
		}
		done <- err
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			// The monitor accepts at once; a startup packet answered
			// shows the server itself is up.
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}) // SSLRequest
			var b [1]byte
			_, rerr := io.ReadFull(c, b[:])
			c.Close()
			if rerr == nil {
				break
			}
		}
		select {
		case err := <-done:
			return result{}, fmt.Errorf("image stopped before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			close(stop)
			<-done
			return result{}, fmt.Errorf("image not serving after 2 minutes: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r, err := measure(pgbench, "cumulusdb-image", mode, port, "cumulus", cfg, dur)
	close(stop)
	derr := <-done
	if err != nil {
		// What the image said is the first thing to look at.
		tail := stderr.String()
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return r, fmt.Errorf("%w\nimage stderr (tail):\n%s", err, tail)
	}
	return r, derr
}
