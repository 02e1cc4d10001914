package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel fscrypt (v2 policies), through the ioctls of
// linux/fscrypt.h. A v2 key is added to the filesystem's own keyring, where
// the kernel, not a process, holds it: every process on the node then sees
// the directory's plaintext, and the disk only ever sees ciphertext. The key
// is never written anywhere; it is gone when it is removed or the filesystem
// is unmounted.

const (
	fscryptKeySize              = 64 // FSCRYPT_MAX_KEY_SIZE; AES-256-XTS needs 64 bytes
	fscryptKeySpecIdentifier    = 2  // FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	fscryptPolicyV2             = 2  // FSCRYPT_POLICY_V2
	fscryptModeAES256XTS        = 1  // FSCRYPT_MODE_AES_256_XTS, file contents
	fscryptModeAES256CTS        = 4  // FSCRYPT_MODE_AES_256_CTS, file names
	fscryptPolicyFlagsPad32     = 3  // FSCRYPT_POLICY_FLAGS_PAD_32
	fscryptKeyStatusAbsent      = 1  // FSCRYPT_KEY_STATUS_ABSENT
	fscryptKeyStatusPresent     = 2  // FSCRYPT_KEY_STATUS_PRESENT
	fscryptRemovalFlagFilesBusy = 1  // FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY
)

// KeyID is a v2 master key identifier: the kernel derives it from the key, so
// it names the key without revealing it.
type KeyID [16]byte

func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// ParseKeyID reads a KeyID from its hex form.
func ParseKeyID(s string) (KeyID, error) {
	var id KeyID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("%q is not a 32-digit hex fscrypt key identifier", s)
	}
	copy(id[:], b)
	return id, nil
}

func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// SupportsFscrypt reports whether the filesystem holding dir can encrypt:
// ext4 needs the "encrypt" feature, which the root filesystem here lacks.
func SupportsFscrypt(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	err = ioctl(f, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg))
	switch {
	case errors.Is(err, unix.ENODATA):
		return nil // supported; this directory is just not encrypted
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY):
		return fmt.Errorf("the filesystem of %s does not support fscrypt (ext4 needs the encrypt feature): %w", dir, err)
	case err == nil:
		return fmt.Errorf("%s is itself encrypted; the volumes root must not be", dir)
	default:
		return fmt.Errorf("probing fscrypt on %s: %w", dir, err)
	}
}

// NewKey returns a fresh random master key.
func NewKey() ([]byte, error) {
	key := make([]byte, fscryptKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating a volume key: %w", err)
	}
	return key, nil
}

// AddKey adds key to the keyring of the filesystem that holds mountpoint and
// returns its identifier.
func AddKey(mountpoint string, key []byte) (KeyID, error) {
	var id KeyID
	if len(key) != fscryptKeySize {
		return id, fmt.Errorf("a volume key must be %d bytes, not %d", fscryptKeySize, len(key))
	}
	f, err := os.Open(mountpoint)
	if err != nil {
		return id, err
	}
	defer f.Close()
	// struct fscrypt_add_key_arg is followed by the raw key.
	var arg unix.FscryptAddKeyArg
	hdr := int(unsafe.Sizeof(arg))
	buf := make([]byte, hdr+len(key))
	defer clear(buf)
	argp := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	argp.Key_spec.Type = fscryptKeySpecIdentifier
	argp.Raw_size = uint32(len(key))
	copy(buf[hdr:], key)
	if err := ioctl(f, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&buf[0])); err != nil {
		return id, fmt.Errorf("adding a volume key to the filesystem of %s: %w", mountpoint, err)
	}
	copy(id[:], argp.Key_spec.U[:16])
	return id, nil
}

// SetPolicy makes the empty directory dir encrypt everything created in it
// (contents with AES-256-XTS, names with AES-256-CTS) under the key id, which
// must have been added.
func SetPolicy(dir string, id KeyID) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	policy := unix.FscryptPolicyV2{
		Version:                   fscryptPolicyV2,
		Contents_encryption_mode:  fscryptModeAES256XTS,
		Filenames_encryption_mode: fscryptModeAES256CTS,
		Flags:                     fscryptPolicyFlagsPad32,
		Master_key_identifier:     id,
	}
	if err := ioctl(f, unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&policy)); err != nil {
		return fmt.Errorf("setting the encryption policy of %s: %w", dir, err)
	}
	return nil
}

// PolicyKey returns the identifier of the key that encrypts dir, or ok=false
// when dir is not encrypted.
func PolicyKey(dir string) (id KeyID, ok bool, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return id, false, err
	}
	defer f.Close()
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	err = ioctl(f, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg))
	if errors.Is(err, unix.ENODATA) {
		return id, false, nil
	}
	if err != nil {
		return id, false, fmt.Errorf("reading the encryption policy of %s: %w", dir, err)
	}
	if arg.Policy[0] != fscryptPolicyV2 {
		return id, false, fmt.Errorf("%s has an fscrypt v%d policy, not v2", dir, arg.Policy[0])
	}
	p := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	return p.Master_key_identifier, true, nil
}

// RemoveKey removes the key id from the filesystem of mountpoint and wipes it
// from the kernel's memory. It fails while a file encrypted with it is still
// open.
func RemoveKey(mountpoint string, id KeyID) error {
	f, err := os.Open(mountpoint)
	if err != nil {
		return err
	}
	defer f.Close()
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = fscryptKeySpecIdentifier
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(f, unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		if errors.Is(err, unix.ENOKEY) {
			return nil // already removed
		}
		return fmt.Errorf("removing volume key %s: %w", id, err)
	}
	if arg.Removal_status_flags&fscryptRemovalFlagFilesBusy != 0 {
		return fmt.Errorf("volume key %s is removed but files encrypted with it are still open", id)
	}
	return nil
}

// KeyPresent reports whether the key id is in the filesystem's keyring.
func KeyPresent(mountpoint string, id KeyID) (bool, error) {
	f, err := os.Open(mountpoint)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var arg unix.FscryptGetKeyStatusArg
	arg.Key_spec.Type = fscryptKeySpecIdentifier
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(f, unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Pointer(&arg)); err != nil {
		return false, fmt.Errorf("reading the status of volume key %s: %w", id, err)
	}
	return arg.Status != fscryptKeyStatusAbsent, nil
}
