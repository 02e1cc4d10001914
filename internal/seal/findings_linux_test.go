package seal

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Finding 2: never decrypt from memory that others can write. A writer
// flips a byte of a chunk body back and forth while unseal runs; no run may
// succeed with plaintext other than the sealed one.
func TestFindingRacingWriterNeverYieldsModifiedPlaintext(t *testing.T) {
	plain := pseudoRandom(5, 2*DefaultChunkSize)
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": plain}, SealOptions{})
	dek := bundleDEK(t, m)
	runs, modified := raceUnseal(t, bundle, dek, m, plain, 300, func(o *UnsealOptions) {})
	t.Logf("%d of %d runs succeeded", runs, 300)
	if modified > 0 {
		t.Errorf("%d runs succeeded with modified plaintext", modified)
	}
}

// raceUnseal runs unseal n times while a goroutine toggles one byte in the
// middle of chunk 1 of a.bin, and returns how many runs succeeded and how
// many of those wrote plaintext other than plain.
func raceUnseal(t *testing.T, bundle string, dek []byte, m *Manifest, plain []byte, n int, opt func(*UnsealOptions)) (succeeded, modified int) {
	t.Helper()
	sealedPath := filepath.Join(bundle, m.Files[0].SealedPath())
	// The writer maps the file shared, as another pod with a writable mount
	// of the same volume can, and toggles the byte with plain stores.
	w, err := os.OpenFile(sealedPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	mapped, err := unix.Mmap(int(w.Fd()), 0, int(sealedSize(m.Files[0].Size, m.Files[0].ChunkSize)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mapped)
	off := HeaderSize + (DefaultChunkSize + TagSize) + DefaultChunkSize/2
	orig := mapped[off]
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i%1024 != 0 || !stop.Load(); i++ {
			mapped[off] = orig ^ byte(i&1)
		}
		mapped[off] = orig
	})
	dest := memDir(t)
	for run := range n {
		out := filepath.Join(dest, fmt.Sprint(run))
		opts := UnsealOptions{OpenOptions: OpenOptions{Key: Key{DEK: dek}, ExpectDigest: m.ModelDigest, Workers: 2}}
		opt(&opts)
		if _, err := Unseal(context.Background(), bundle, out, opts); err != nil {
			continue
		}
		succeeded++
		if !bytes.Equal(readBytes(t, filepath.Join(out, "a.bin")), plain) {
			modified++
		}
		os.RemoveAll(out)
	}
	stop.Store(true)
	wg.Wait()
	return succeeded, modified
}
