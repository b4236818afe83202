// Package build turns Go programs into CumulusDB images: it builds the
// guest kernel's ELF from this module's source and the program as a static
// linux/amd64 executable with the go command, and bundles the two.
//
// The program is built unmodified, in its own module (anything `go build`
// accepts, or an existing ELF); the kernel is not linked into it but loaded
// beside it at 0x4000000000 (see ARCHITECTURE.md), which is what lets
// `go test -c` binaries of the standard library boot too.
package build

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/vmm"
)

// ModuleRoot finds this module's source tree: $CUMULUS_ROOT, else the
// directory this file was compiled from, else the current directory's
// module if it is this one.
func ModuleRoot() (string, error) {
	if r := os.Getenv("CUMULUS_ROOT"); r != "" {
		return r, nil
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		if isRoot(root) {
			return root, nil
		}
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err == nil {
		root := strings.TrimSpace(string(out))
		if isRoot(root) {
			return root, nil
		}
	}
	return "", errors.New("build: cannot find the CumulusDB source tree (set CUMULUS_ROOT)")
}

func isRoot(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	return err == nil && bytes.Contains(b, []byte("module github.com/cumulusdb/cumulus\n"))
}

func goEnv() []string {
	return append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
}

var (
	kernelOnce sync.Once
	kernelELF  []byte
	kernelErr  error
)

// Kernel builds (once per process; the go build cache makes it cheap
// across processes) the guest kernel ELF.
func Kernel() ([]byte, error) {
	kernelOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			kernelErr = err
			return
		}
		dir, err := os.MkdirTemp("", "cumulus-kernel-")
		if err != nil {
			kernelErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "kernel.elf")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-T=0x4000001000", "-o", out, "./kernel/kmain")
		cmd.Dir = root
		cmd.Env = goEnv()
		if msg, err := cmd.CombinedOutput(); err != nil {
			kernelErr = fmt.Errorf("build: kernel: %v\n%s", err, msg)
			return
		}
		kernelELF, kernelErr = os.ReadFile(out)
	})
	return kernelELF, kernelErr
}

var (
	netsvcOnce sync.Once
	netsvcELF  []byte
	netsvcErr  error
)

// Netsvc builds (once per process) the network service's ELF
// (kernel/net/netsvc), linked at boot.NetsvcBase.
func Netsvc() ([]byte, error) {
	netsvcOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			netsvcErr = err
			return
		}
		dir, err := os.MkdirTemp("", "cumulus-netsvc-")
		if err != nil {
			netsvcErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "netsvc.elf")
		ld := fmt.Sprintf("-ldflags=-T=%#x", boot.NetsvcBase+0x1000)
		cmd := exec.Command("go", "build", "-trimpath", ld, "-o", out, "./kernel/net/netsvc")
		cmd.Dir = root
		cmd.Env = goEnv()
		if msg, err := cmd.CombinedOutput(); err != nil {
			netsvcErr = fmt.Errorf("build: network service: %v\n%s", err, msg)
			return
		}
		netsvcELF, netsvcErr = os.ReadFile(out)
	})
	return netsvcELF, netsvcErr
}

// ModuleBinary builds pkg, a package of this module named from its root
// ("./bench/coreguest"), into the static executable out: the same file
// runs as a Linux process and, through Image, inside an image, which is
// what the benchmarks compare.
func ModuleBinary(pkg, out string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = goEnv()
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build: %s: %v\n%s", pkg, err, msg)
	}
	return nil
}

// Program builds the Go main package at path (a directory, a package
// pattern relative to the current directory, or an existing ELF file) and
// returns the executable's bytes.
func Program(path string) ([]byte, error) {
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if err := vmm.CheckProgram(data); err != nil {
			return nil, err
		}
		return data, nil
	}
	dir, err := os.MkdirTemp("", "cumulus-prog-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "prog")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = path
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		// A package pattern: build from here.
		cmd = exec.Command("go", "build", "-o", out, path)
	}
	cmd.Env = goEnv()
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build: %s: %v\n%s", path, err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	if err := vmm.CheckProgram(data); err != nil {
		return nil, err
	}
	return data, nil
}

// Image bundles a program executable with the kernel.
func Image(name string, program []byte) (*vmm.Image, error) {
	if err := vmm.CheckProgram(program); err != nil {
		return nil, err
	}
	k, err := Kernel()
	if err != nil {
		return nil, err
	}
	svc, err := Netsvc()
	if err != nil {
		return nil, err
	}
	img := &vmm.Image{Manifest: vmm.Manifest{Name: name, GoVersion: runtime.Version()}, Kernel: k, Program: program, Netsvc: svc}
	// The system-call sites the monitor rewrites, found once here rather
	// than at every boot.
	if img.Manifest.ProgramSites, err = vmm.SyscallSites(program); err != nil {
		return nil, err
	}
	if img.Manifest.NetsvcSites, err = vmm.SyscallSites(svc); err != nil {
		return nil, err
	}
	return img, nil
}
