// Command cumulus builds and runs CumulusDB images.
//
//	cumulus image [-o app.img] [PATH]        build an image from a Go main package (default: the CumulusDB server)
//	cumulus run [flags] app.img [-- args...]  boot an image under KVM with CumulusDB's monitor
//	cumulus test [go test flags] PACKAGES     run package tests inside images (go test -exec)
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cumulusdb/cumulus/bench/alloc"
	"github.com/cumulusdb/cumulus/bench/core"
	netbench "github.com/cumulusdb/cumulus/bench/net"
	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm"
	"github.com/cumulusdb/cumulus/vmm/build"
	"github.com/cumulusdb/cumulus/vmm/kvm"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  cumulus up [-cpus N] [-mem SIZE]           build the CumulusDB server image and boot it
  cumulus serve [--listen ADDR] [--data DIR] run CumulusDB as a Linux process
  cumulus image [-o FILE] [PATH]             build a bootable image from a Go main package
                                             (PATH: directory, package, or linux/amd64 ELF;
                                             default: the CumulusDB server)
  cumulus run [-cpus N] [-mem SIZE] [-mem-prealloc] [-timeout D] [-stats] [-v HOST:GUEST[:ro]]...
              [-disk PATH[:ro]]... [-disk-size SIZE] [-net] [-p [HOSTADDR:]HOSTPORT:GUESTPORT]...
              IMAGE [-- ARGS...]             boot IMAGE under KVM; its exit status is ours
  cumulus test [go test flags] PACKAGES      run package tests inside images
  cumulus bench core [-cpus N] [-out DIR]    kernel-entry micro-benchmarks, image vs Linux
  cumulus bench presence [-out DIR]          page-presence checks: page-table walk vs mincore/pagemap
  cumulus bench alloc [-out DIR]             frame allocation: LLFree (image, by kernel call) vs mmap, Go heap
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	code := 0
	switch os.Args[1] {
	case "image":
		err = cmdImage(os.Args[2:])
	case "run":
		code, err = cmdRun(os.Args[2:])
	case "up":
		code, err = cmdUp(os.Args[2:])
	case "serve":
		code, err = cmdServe(os.Args[2:])
	case "test":
		code, err = cmdTest(os.Args[2:])
	case "bench":
		err = cmdBench(os.Args[2:])
	case "exec-test":
		code, err = cmdExecTest(os.Args[2:])
	case "-h", "-help", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "cumulus: unknown command %q\n", os.Args[1])
		usage()
	}
	if err != nil {
		if errors.Is(err, kvm.ErrNoKVM) {
			fmt.Fprintln(os.Stderr, kvm.Describe(err))
		} else {
			fmt.Fprintf(os.Stderr, "cumulus: %v\n", err)
		}
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func cmdImage(args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	out := fs.String("o", "", "output file (default: NAME.img)")
	fs.Parse(args)
	path := "./cmd/cumulusdb"
	if fs.NArg() > 0 {
		path = fs.Arg(0)
	} else {
		root, err := build.ModuleRoot()
		if err != nil {
			return err
		}
		path = filepath.Join(root, "cmd", "cumulusdb")
	}
	name := filepath.Base(strings.TrimSuffix(path, "/"))
	if name == "." || name == "" {
		wd, _ := os.Getwd()
		name = filepath.Base(wd)
	}
	if *out == "" {
		*out = name + ".img"
	}
	start := time.Now()
	prog, err := build.Program(path)
	if err != nil {
		return err
	}
	img, err := build.Image(name, prog)
	if err != nil {
		return err
	}
	data := img.Encode()
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "cumulus: wrote %s (%d KiB: kernel %d KiB + program %d KiB + network service %d KiB) in %v\n",
		*out, len(data)>>10, len(img.Kernel)>>10, len(img.Program)>>10, len(img.Netsvc)>>10, time.Since(start).Round(time.Millisecond))
	return nil
}

// parseSize reads 512M, 2G, 1048576.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "G"), strings.HasSuffix(s, "GiB"):
		mult = 1 << 30
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "MiB"):
		mult = 1 << 20
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "KiB"):
		mult = 1 << 10
	}
	v, err := strconv.ParseUint(strings.TrimRight(s, "GMKiB"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q (use e.g. 512M or 2G)", s)
	}
	return v * mult, nil
}

type runFlags struct {
	cpus        int
	mem         string
	timeout     time.Duration
	stats       bool
	env         multiFlag
	shares      multiFlag
	workdir     string
	reclaim     bool
	keepSyscall bool
	disks       multiFlag
	diskSize    string
	ports       multiFlag
	net         bool
	prealloc    bool
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func (rf *runFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&rf.cpus, "cpus", 1, "number of vCPUs")
	fs.StringVar(&rf.mem, "mem", "1G", "guest memory")
	fs.BoolVar(&rf.prealloc, "mem-prealloc", false, "back all guest memory with host memory before the guest starts (no host page faults later, at the cost of start-up time)")
	fs.DurationVar(&rf.timeout, "timeout", 0, "stop the guest after this long (exit status 124)")
	fs.BoolVar(&rf.stats, "stats", false, "print exits, hypercalls and kernel entries at the end (JSON, stderr)")
	fs.Var(&rf.env, "e", "set an environment variable in the guest (KEY=VALUE, repeatable)")
	fs.Var(&rf.shares, "v", "share a host directory: HOST:GUEST[:ro] (repeatable)")
	fs.StringVar(&rf.workdir, "w", "/", "the guest's working directory")
	fs.BoolVar(&rf.reclaim, "reclaim", true, "munmap/MADV_DONTNEED of 256 KiB or more return frames to the allocator (TLB shootdowns); false zeroes them in place")
	fs.BoolVar(&rf.keepSyscall, "keep-syscall", false, "do not rewrite the program's SYSCALL sites into direct kernel calls")
	fs.Var(&rf.disks, "disk", "attach a host file as a virtio block device: PATH[:ro] (repeatable; /dev/vda, /dev/vdb, ... in order)")
	fs.StringVar(&rf.diskSize, "disk-size", "1G", "size of a -disk file that does not exist yet (created sparse)")
	fs.Var(&rf.ports, "p", "publish a guest TCP port on the host: [HOSTADDR:]HOSTPORT:GUESTPORT (repeatable; implies -net)")
	fs.BoolVar(&rf.net, "net", false, "attach a virtio network device (eth0, "+boot.GuestIP+"/24) behind the monitor's user-mode network (gateway "+boot.GatewayIP+"; guest connections to it reach the host's 127.0.0.1)")
}

func (rf *runFlags) config(args []string) (vmm.Config, error) {
	mem, err := parseSize(rf.mem)
	if err != nil {
		return vmm.Config{}, err
	}
	env := os.Environ()
	env = append(env, rf.env...)
	var shares []vmm.Share
	for _, s := range rf.shares {
		sh, err := vmm.ParseShare(s)
		if err != nil {
			return vmm.Config{}, err
		}
		shares = append(shares, sh)
	}
	diskSize, err := parseSize(rf.diskSize)
	if err != nil {
		return vmm.Config{}, fmt.Errorf("-disk-size: %w", err)
	}
	var disks []vmm.Disk
	for _, s := range rf.disks {
		d, err := vmm.ParseDisk(s, int64(diskSize))
		if err != nil {
			return vmm.Config{}, err
		}
		if _, err := os.Stat(d.Path); errors.Is(err, os.ErrNotExist) && !d.ReadOnly {
			fmt.Fprintf(os.Stderr, "cumulus: creating disk %s (%s)\n", d.Path, rf.diskSize)
		}
		disks = append(disks, d)
	}
	var ports []vmm.PortForward
	for _, s := range rf.ports {
		p, err := vmm.ParsePortForward(s)
		if err != nil {
			return vmm.Config{}, err
		}
		ports = append(ports, p)
	}
	return vmm.Config{
		Disks: disks, Net: rf.net, Ports: ports,
		CPUs: rf.cpus, MemBytes: mem, Timeout: rf.timeout, Args: args, Env: env,
		Shares: shares, Cwd: rf.workdir, KeepFrames: !rf.reclaim, KeepSyscall: rf.keepSyscall, Prealloc: rf.prealloc,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()})),
	}, nil
}

func cmdRun(args []string) (int, error) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var rf runFlags
	rf.register(fs)
	fs.Parse(args)
	if fs.NArg() < 1 {
		usage()
	}
	img, err := vmm.ReadImage(fs.Arg(0))
	if err != nil {
		return 1, err
	}
	rest := fs.Args()[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	cfg, err := rf.config(append([]string{img.Manifest.Name}, rest...))
	if err != nil {
		return 2, err
	}
	return runImage(img, cfg, rf.stats)
}

// runImage boots img until it exits. SIGINT or SIGTERM stops the guest
// (status 130 or 143, as a shell reports a process killed by them) after
// which the statistics asked for are still printed.
func runImage(img *vmm.Image, cfg vmm.Config, stats bool) (int, error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	stop := make(chan struct{})
	cfg.Stop = stop
	var got atomic.Value
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sig:
			got.Store(s)
			close(stop)
		case <-done:
		}
	}()
	res, err := vmm.Run(img, cfg)
	if stats {
		printStats(res.Stats)
	}
	if errors.Is(err, vmm.ErrTimeout) {
		return 124, nil
	}
	if s, ok := got.Load().(os.Signal); ok && err == nil && res.Reason == "stopped" {
		if s == syscall.SIGTERM {
			return 143, nil
		}
		return 130, nil
	}
	if err != nil {
		return 1, err
	}
	return res.ExitCode, nil
}

func printStats(s vmm.Stats) {
	type kv struct {
		Nr, N int
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	fmt.Fprintf(os.Stderr, "cumulus: stats %s\n", b)
	var top []kv
	for nr, n := range s.SyscallsByNr {
		top = append(top, kv{nr, int(n)})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].N > top[j].N })
	secs := s.Wall.Seconds()
	fmt.Fprintf(os.Stderr, "cumulus: %.0f exits/s, %.0f syscalls/s, %.0f ticks/s over %v\n",
		float64(s.Exits)/secs, float64(s.Syscalls)/secs, float64(s.TicksDelivered+s.TicksDeferred)/secs, s.Wall.Round(time.Millisecond))
}

// cmdTest runs `go test -exec "cumulus exec-test"`: go test builds each
// package's test binary for linux/amd64 and hands it to us; we boot it.
func cmdTest(args []string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	goArgs := append([]string{"test", "-exec", self + " exec-test"}, args...)
	cmd := exec.Command("go", goArgs...)
	cmd.Stdout, cmd.Stderr, cmd.Stdin = os.Stdout, os.Stderr, os.Stdin
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), nil
		}
		return 1, err
	}
	return 0, nil
}

// cmdExecTest is the -exec helper: BINARY ARGS... → boot BINARY in an image.
func cmdExecTest(args []string) (int, error) {
	if len(args) < 1 {
		return 2, errors.New("exec-test: no binary")
	}
	prog, err := os.ReadFile(args[0])
	if err != nil {
		return 1, err
	}
	img, err := build.Image(filepath.Base(args[0]), prog)
	if err != nil {
		return 1, err
	}
	cpus := 2
	if v, err := strconv.Atoi(os.Getenv("CUMULUS_CPUS")); err == nil && v > 0 {
		cpus = v
	}
	mem := uint64(1 << 30)
	if v := os.Getenv("CUMULUS_MEM"); v != "" {
		if m, err := parseSize(v); err == nil {
			mem = m
		}
	}
	// What a test expects of its machine: its package directory as the
	// working directory (read-only), GOROOT and the zoneinfo database
	// (read-only), and a private, writable /tmp.
	wd, err := os.Getwd()
	if err != nil {
		return 1, err
	}
	tmp, err := os.MkdirTemp("", "cumulus-test-tmp-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(tmp)
	shares := []vmm.Share{{Host: wd, Guest: wd, ReadOnly: true}, {Host: tmp, Guest: "/tmp"}}
	for _, dir := range []string{runtime.GOROOT(), "/usr/share/zoneinfo"} {
		if st, err := os.Stat(dir); err == nil && st.IsDir() && dir != "" {
			shares = append(shares, vmm.Share{Host: dir, Guest: dir, ReadOnly: true})
		}
	}
	env := append(os.Environ(), "TMPDIR=/tmp", "PWD="+wd)
	cfg := vmm.Config{CPUs: cpus, MemBytes: mem, Args: append([]string{img.Manifest.Name}, args[1:]...), Env: env,
		Shares: shares, Cwd: wd}
	return runImage(img, cfg, os.Getenv("CUMULUS_STATS") != "")
}

func cmdBench(args []string) error {
	if len(args) < 1 {
		usage()
	}
	switch args[0] {
	case "blk":
		return cmdBenchBlk(args[1:])
	case "tpcc":
		return cmdBenchTPCC(args[1:])
	case "snapshot":
		return cmdBenchSnapshot(args[1:])
	case "alloc":
		fs := flag.NewFlagSet("bench alloc", flag.ExitOnError)
		out := fs.String("out", "out/bench", "directory for the reports")
		fs.Parse(args[1:])
		fmt.Fprintln(os.Stderr, "cumulus: allocators in one Linux process (llfree as a library, mmap, Go heap)...")
		lin, err := alloc.Run(alloc.Options{})
		if err != nil {
			return err
		}
		fmt.Print(lin.Table())
		os.MkdirAll(*out, 0o755)
		lin.WriteJSON(filepath.Join(*out, "alloc-linux.json"))
		lin.WritePNG(filepath.Join(*out, "alloc-linux.png"))
		fmt.Fprintln(os.Stderr, "cumulus: kapi.Frames in the image (LLFree by kernel call) vs on Linux (mmap+populate+munmap)...")
		rep, err := core.Run(core.Options{Name: "alloc", CPUs: 2, MemBytes: 4 << 30, OutDir: *out, Only: core.AllocBenchmarks, Progress: os.Stderr})
		if err != nil {
			return err
		}
		fmt.Print(rep.Table())
		fmt.Fprintf(os.Stderr, "cumulus: wrote %s/alloc-linux.{json,png} and %s/alloc.{json,png}\n", *out, *out)
		return nil
	case "presence":
		fs := flag.NewFlagSet("bench presence", flag.ExitOnError)
		out := fs.String("out", "out/bench", "directory for presence.json and presence.png")
		fs.Parse(args[1:])
		rep, err := core.Run(core.Options{Name: "presence", CPUs: 1, OutDir: *out, Only: core.PresenceBenchmarks, Progress: os.Stderr})
		if err != nil {
			return err
		}
		fmt.Print(rep.Table())
		for _, r := range rep.Rows {
			fmt.Printf("%s: image %.0f checks/s vs linux %.0f checks/s = %.0fx\n", r.Name, 1e9/r.ImageNs, 1e9/r.LinuxNs, r.LinuxNs/r.ImageNs)
		}
		fmt.Fprintf(os.Stderr, "cumulus: wrote %s/presence.json and %s/presence.png\n", *out, *out)
		return nil
	case "net":
		fs := flag.NewFlagSet("bench net", flag.ExitOnError)
		out := fs.String("out", "out/bench", "directory for net.json and net.png")
		n := fs.Int("requests", 5000, "request/response round trips")
		mib := fs.Int("bulk", 256, "bulk transfer MiB")
		fs.Parse(args[1:])
		rep, err := netbench.Run(netbench.Options{Requests: *n, BulkMiB: *mib, OutDir: *out, Progress: os.Stderr})
		if err != nil {
			return err
		}
		fmt.Print(rep.Table())
		fmt.Fprintf(os.Stderr, "cumulus: wrote %s/net.json and %s/net.png\n", *out, *out)
		return nil
	case "core":
		fs := flag.NewFlagSet("bench core", flag.ExitOnError)
		cpus := fs.Int("cpus", 2, "vCPUs (and GOMAXPROCS for the Linux baseline)")
		out := fs.String("out", "out/bench", "directory for core.json and core.png")
		only := fs.String("only", "", "comma-separated benchmarks (default: all)")
		fs.Parse(args[1:])
		o := core.Options{CPUs: *cpus, OutDir: *out, Progress: os.Stderr}
		if *only != "" {
			o.Only = strings.Split(*only, ",")
		}
		rep, err := core.Run(o)
		if err != nil {
			return err
		}
		fmt.Print(rep.Table())
		fmt.Fprintf(os.Stderr, "cumulus: wrote %s/core.json and %s/core.png\n", *out, *out)
		return nil
	}
	return fmt.Errorf("unknown benchmark group %q (have: core)", args[0])
}

// logLevel: CUMULUS_DEBUG=1 shows the monitor's debug log (boot phases).
func logLevel() slog.Level {
	if os.Getenv("CUMULUS_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
