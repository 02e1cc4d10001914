//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Helpers for the tests that look at the node itself: the cluster's work dir
// (where its disk images, etcd data and audit log are), files on the node's
// disk, and the kernel's fscrypt keyring. They need root, as the cluster does.

// clusterWorkDir is the local cluster's work dir: the admin kubeconfig lives
// at its top.
func clusterWorkDir() (string, error) {
	kc := os.Getenv("KUBECONFIG")
	dir := filepath.Dir(kc)
	if _, err := os.Stat(filepath.Join(dir, "records.json")); err != nil {
		return "", fmt.Errorf("KUBECONFIG %s is not the local cluster's (no records.json beside it): these tests read the node's disk: %w", kc, err)
	}
	return dir, nil
}

func runKubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// diskContains reports whether needle occurs in the bytes of the file at
// path, reading only its data extents (the volumes image is sparse).
func diskContains(path string, needles ...[]byte) ([]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	found := make([]bool, len(needles))
	maxLen := 0
	for _, n := range needles {
		maxLen = max(maxLen, len(n))
	}
	buf := make([]byte, 4<<20)
	var off int64
	for off < st.Size() {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return nil, fmt.Errorf("seeking data in %s: %w", path, err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seeking a hole in %s: %w", path, err)
		}
		// Read the extent in chunks that overlap by the longest needle.
		for pos := data; pos < hole; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			if n == 0 {
				break
			}
			for i, needle := range needles {
				found[i] = found[i] || bytes.Contains(buf[:n], needle)
			}
			if pos+int64(n) >= hole || n <= maxLen {
				break
			}
			pos += int64(n - maxLen)
		}
		off = hole
	}
	return found, nil
}

// fscryptKeyPresent asks the kernel whether the filesystem at mountpoint has
// the fscrypt v2 key with this identifier (hex) in its keyring.
func fscryptKeyPresent(mountpoint, identifier string) (bool, error) {
	id, err := hex.DecodeString(identifier)
	if err != nil || len(id) != 16 {
		return false, fmt.Errorf("%q is not a 16-byte hex key identifier", identifier)
	}
	f, err := os.Open(mountpoint)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var arg unix.FscryptGetKeyStatusArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		return false, fmt.Errorf("FS_IOC_GET_ENCRYPTION_KEY_STATUS: %w", errno)
	}
	return arg.Status != unix.FSCRYPT_KEY_STATUS_ABSENT, nil
}
