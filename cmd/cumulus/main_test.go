package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cumulusdb/cumulus/vmm/kvm"
)

func needKVM(t *testing.T) {
	t.Helper()
	if err := kvm.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but KVM is unavailable: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

// cumulus builds this command once per test binary.
func cumulus(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cumulus")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build cumulus: %v\n%s", err, out)
	}
	return bin
}

// TestEndToEnd is the user's path: a program in someone else's module
// becomes an image, boots, gets its arguments, and its exit status is ours.
func TestEndToEnd(t *testing.T) {
	needKVM(t)
	bin := cumulus(t)
	mod := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(mod, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/other\n\ngo 1.26\n")
	write("main.go", `package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Println("args:", os.Args[1:], "procs:", runtime.GOMAXPROCS(0), "env:", os.Getenv("GREETING"))
	os.Exit(7)
}
`)
	img := filepath.Join(t.TempDir(), "other.img")
	if out, err := exec.Command(bin, "image", "-o", img, mod).CombinedOutput(); err != nil {
		t.Fatalf("image: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "run", "-cpus", "2", "-mem", "256M", "-e", "GREETING=hi", "-timeout", "60s", img, "--", "one", "two")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 7 {
		t.Fatalf("run: %v (want exit 7)\n%s", err, stderr.String())
	}
	if got := stdout.String(); got != "args: [one two] procs: 2 env: hi\n" {
		t.Errorf("stdout %q", got)
	}
}

// TestTestCommand runs a package's tests inside images through go test.
func TestTestCommand(t *testing.T) {
	needKVM(t)
	bin := cumulus(t)
	out, err := exec.Command(bin, "test", "-count=1", "errors", "github.com/cumulusdb/cumulus/kernel/mm").CombinedOutput()
	if err != nil {
		t.Fatalf("cumulus test: %v\n%s", err, out)
	}
	for _, want := range []string{"ok  \terrors", "ok  \tgithub.com/cumulusdb/cumulus/kernel/mm"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestRefusesBadInput(t *testing.T) {
	bin := cumulus(t)
	junk := filepath.Join(t.TempDir(), "junk.img")
	os.WriteFile(junk, []byte("not an image"), 0o644)
	out, err := exec.Command(bin, "run", junk).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a CumulusDB image") {
		t.Errorf("junk image: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "image", "-o", filepath.Join(t.TempDir(), "x.img"), "/bin/true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CGO_ENABLED=0") {
		t.Errorf("dynamic ELF: %v\n%s", err, out)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"512M": 512 << 20, "2G": 2 << 30, "1GiB": 1 << 30, "4096": 4096} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	if _, err := parseSize("lots"); err == nil {
		t.Error("bad size accepted")
	}
}

// TestUp is the README's main job: `cumulus up -once` builds the server
// image, boots it with its port published, and a host client's session
// through the image's network stack succeeds; the boots table shows the
// commits of earlier boots survive.
func TestUp(t *testing.T) {
	needKVM(t)
	bin := cumulus(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	out, err := exec.Command(bin, "up", "-once", "-port", strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	for _, want := range []string{"connected from the host", "grace | 225.50", "boots_so_far", "stopped after"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
