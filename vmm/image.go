package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// An Image is what `cumulus image` writes and `cumulus run` boots: the
// guest kernel's ELF and the program's ELF, both static Go binaries, with a
// small manifest. The monitor loads both into one address space.
//
// File format: the 16-byte magic, a little-endian uint32 manifest length,
// the JSON manifest, then the kernel ELF, the program ELF and the network
// service's ELF (optional) back to back.
type Image struct {
	Manifest Manifest
	Kernel   []byte
	Program  []byte
	// Netsvc is the network service (kernel/net/netsvc), linked at
	// boot.NetsvcBase; without it the program's sockets get EAFNOSUPPORT.
	Netsvc []byte
}

// Manifest describes an image.
type Manifest struct {
	Name        string `json:"name"`
	KernelSize  int    `json:"kernel_size"`
	ProgramSize int    `json:"program_size"`
	NetsvcSize  int    `json:"netsvc_size,omitempty"`
	GoVersion   string `json:"go_version,omitempty"`
	// ProgramSites and NetsvcSites are the system-call sites the monitor
	// rewrites (the addresses of the MOVs before each SYSCALL), found when
	// the image was built (SyscallSites) so that a boot need not decode
	// the programs' code again; missing or not matching the code, they
	// are found at boot.
	ProgramSites []uint64 `json:"program_syscall_sites,omitempty"`
	NetsvcSites  []uint64 `json:"netsvc_syscall_sites,omitempty"`
}

const imageMagic = "CUMULUS-IMAGE-01"

// KernelBase is where the kernel ELF is linked and mapped.
const KernelBase = 0x4000000000

// Encode serialises the image.
func (img *Image) Encode() []byte {
	img.Manifest.KernelSize = len(img.Kernel)
	img.Manifest.ProgramSize = len(img.Program)
	img.Manifest.NetsvcSize = len(img.Netsvc)
	m, _ := json.Marshal(img.Manifest)
	var b bytes.Buffer
	b.WriteString(imageMagic)
	binary.Write(&b, binary.LittleEndian, uint32(len(m)))
	b.Write(m)
	b.Write(img.Kernel)
	b.Write(img.Program)
	b.Write(img.Netsvc)
	return b.Bytes()
}

// ErrNotImage reports a file that is not a CumulusDB image.
var ErrNotImage = errors.New("not a CumulusDB image (build one with `cumulus image`)")

// ReadImage loads and validates an image file.
func ReadImage(path string) (*Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return DecodeImage(data)
}

// DecodeImage parses and validates an image.
func DecodeImage(data []byte) (*Image, error) {
	if len(data) < len(imageMagic)+4 || string(data[:len(imageMagic)]) != imageMagic {
		if len(data) >= 4 && string(data[:4]) == "\x7fELF" {
			return nil, fmt.Errorf("image: this is a bare ELF executable: %w", ErrNotImage)
		}
		return nil, fmt.Errorf("image: %w", ErrNotImage)
	}
	p := len(imageMagic)
	n := int(binary.LittleEndian.Uint32(data[p:]))
	p += 4
	if p+n > len(data) {
		return nil, fmt.Errorf("image: truncated manifest")
	}
	var img Image
	if err := json.Unmarshal(data[p:p+n], &img.Manifest); err != nil {
		return nil, fmt.Errorf("image: manifest: %w", err)
	}
	p += n
	ks, ps, ns := img.Manifest.KernelSize, img.Manifest.ProgramSize, img.Manifest.NetsvcSize
	if ks <= 0 || ps <= 0 || ns < 0 || p+ks+ps+ns != len(data) {
		return nil, fmt.Errorf("image: sizes in manifest (%d+%d+%d) do not match file (%d bytes of payload)", ks, ps, ns, len(data)-p)
	}
	img.Kernel = data[p : p+ks]
	img.Program = data[p+ks : p+ks+ps]
	if ns > 0 {
		img.Netsvc = data[p+ks+ps:]
	}
	if err := CheckProgram(img.Program); err != nil {
		return nil, err
	}
	return &img, nil
}

// CheckProgram refuses ELF files the monitor cannot boot, with a reason a
// user can act on.
func CheckProgram(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("program: not an ELF executable: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("program: unsupported architecture %v/%v: images run linux/amd64 programs (build with GOOS=linux GOARCH=amd64)", f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return fmt.Errorf("program: ELF type %v: only static, non-PIE executables are supported (build with CGO_ENABLED=0 and without -buildmode=pie)", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("program: dynamically linked: build with CGO_ENABLED=0")
		}
		if p.Type == elf.PT_LOAD && p.Vaddr < 0x400000 {
			return fmt.Errorf("program: loads at %#x, below 4 MiB", p.Vaddr)
		}
	}
	if f.Section(".gopclntab") == nil && f.Section(".go.buildinfo") == nil {
		return fmt.Errorf("program: not a Go program (no .gopclntab): the kernel services the Go runtime's system calls")
	}
	return nil
}
