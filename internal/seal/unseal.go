package seal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelguard/modelguard/internal/keys"
)

// TempPrefix starts the name of the temporary directory unseal writes into
// inside DEST. A later run removes leftovers with this prefix, which a killed
// run (e.g. an OOM-killed init container) may have left.
const TempPrefix = ".modelguard-unseal-"

// Key is how the caller proves access to a bundle: the DEK itself (the
// unseal init container gets it from the data-key Secret) or a provider
// that unwraps it (a person with the KEK).
type Key struct {
	DEK      []byte
	Provider keys.Provider
}

// OpenOptions are common to Unseal and Verify.
type OpenOptions struct {
	Key Key
	// ExpectDigest, if set, must equal the bundle's model digest
	// ("sha256:<64 hex>"). It is checked against the manifest before any
	// chunk is decrypted, the KEK unwraps the data key only for it (format
	// version 2), and every file's plaintext must hash to the manifest's
	// digest before it is renamed into place.
	ExpectDigest string
	// Workers is the number of parallel workers; 0 means GOMAXPROCS.
	Workers int
	// HTTPClient fetches https bundles; nil means DefaultHTTPClient(nil).
	HTTPClient HTTPDoer
	Progress   Progress

	// skipPlaintextDigest is for the benchmarks alone: see openEngine.
	skipPlaintextDigest bool
}

// UnsealOptions configure Unseal.
type UnsealOptions struct {
	OpenOptions
	// AllowDisk lets DEST be on a file system that is not memory-backed.
	AllowDisk bool
	// KeepExisting makes entries already in DEST with the names of the
	// bundle's top-level files or directories an error. By default they are
	// replaced, so that unseal is idempotent: an init container that runs
	// again in the same memory volume (after a pod sandbox restart) succeeds.
	// They are removed once the manifest is authenticated and the digest
	// checked, before decryption, so that the volume need not hold two
	// copies. Other entries of DEST are never touched.
	KeepExisting bool
}

// Result summarizes a finished Unseal or Verify.
type Result struct {
	Manifest *Manifest
	Files    int
	Bytes    int64
	Duration time.Duration
}

// Verify authenticates every chunk of the bundle at location (a directory or
// an https URL) without writing plaintext anywhere.
func Verify(ctx context.Context, location string, opts OpenOptions) (*Result, error) {
	src, err := openBundle(location, opts.HTTPClient)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	return verifySource(ctx, src, opts)
}

func verifySource(ctx context.Context, src bundleSource, opts OpenOptions) (*Result, error) {
	start := time.Now()
	m, dek, err := openManifest(ctx, src, opts)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	if opts.Progress != nil {
		opts.Progress.SetTotal(m.TotalSize())
	}
	e := &openEngine{src: src, m: m, dek: dek, workers: opts.Workers, progress: opts.Progress, skipPlaintextDigest: opts.skipPlaintextDigest}
	if err := e.run(ctx); err != nil {
		return nil, err
	}
	return &Result{Manifest: m, Files: len(m.Files), Bytes: m.TotalSize(), Duration: time.Since(start)}, nil
}

// Unseal decrypts the bundle at location (a directory or an https URL,
// streamed with no ciphertext staged on disk) into dest.
//
// dest must be on tmpfs or ramfs unless AllowDisk is set. Unseal writes into
// a temporary directory inside dest and renames the files into place only
// when every chunk has been authenticated; on any error it removes every
// plaintext byte it wrote, including a dest directory it created.
func Unseal(ctx context.Context, location, dest string, opts UnsealOptions) (res *Result, err error) {
	start := time.Now()
	createdDest, err := prepareDest(dest, opts.AllowDisk)
	if err != nil {
		return nil, err
	}
	tmp := ""
	defer func() {
		if err == nil {
			return
		}
		if tmp != "" {
			if rerr := os.RemoveAll(tmp); rerr != nil {
				err = fmt.Errorf("%w; also failed to remove the partial plaintext in %s: %v", err, tmp, rerr)
			}
		}
		if createdDest {
			_ = os.Remove(dest)
		}
	}()

	src, err := openBundle(location, opts.HTTPClient)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	m, dek, err := openManifest(ctx, src, opts.OpenOptions)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	tops := topLevelNames(m)
	for _, name := range tops {
		existing := filepath.Join(dest, name)
		if _, err := os.Lstat(existing); err != nil {
			continue
		}
		if opts.KeepExisting {
			return nil, fmt.Errorf("DEST %s already has %s; not replacing it (--keep-existing)", dest, name)
		}
		// Removed now, not at the rename, so that a memory volume sized for
		// one copy of the model need not hold two.
		if err := os.RemoveAll(existing); err != nil {
			return nil, fmt.Errorf("replacing %s in DEST: %w", name, err)
		}
	}

	if tmp, err = os.MkdirTemp(dest, TempPrefix); err != nil {
		return nil, fmt.Errorf("creating a temporary directory in DEST: %w", err)
	}
	sink, err := newDirSink(tmp)
	if err != nil {
		return nil, err
	}
	defer sink.root.Close()
	if opts.Progress != nil {
		opts.Progress.SetTotal(m.TotalSize())
	}
	e := &openEngine{src: src, m: m, dek: dek, sink: sink, workers: opts.Workers, progress: opts.Progress,
		skipPlaintextDigest: opts.OpenOptions.skipPlaintextDigest}
	if err := e.run(ctx); err != nil {
		return nil, err
	}
	if err := moveIntoPlace(tmp, dest, tops); err != nil {
		return nil, err
	}
	if err := os.Remove(tmp); err != nil {
		return nil, fmt.Errorf("removing the temporary directory: %w", err)
	}
	return &Result{Manifest: m, Files: len(m.Files), Bytes: m.TotalSize(), Duration: time.Since(start)}, nil
}

// openManifest reads the manifest, obtains and checks the DEK, authenticates
// the manifest, and checks the expected digest, all before any chunk is
// decrypted. With a provider, a manifest that names another model than the
// expected one is refused before unwrapping, and the DEK is unwrapped for
// the expected digest: a bundle cannot talk the KEK into opening it for
// another model.
func openManifest(ctx context.Context, src bundleSource, opts OpenOptions) (*Manifest, []byte, error) {
	if opts.ExpectDigest != "" && !validDigest(opts.ExpectDigest) {
		return nil, nil, fmt.Errorf("expected digest %q is not sha256:<64 lowercase hex>", truncate(opts.ExpectDigest, 80))
	}
	m, err := readManifest(ctx, src)
	if err != nil {
		return nil, nil, err
	}
	var dek []byte
	switch k := opts.Key; {
	case k.DEK != nil && k.Provider != nil:
		return nil, nil, errors.New("give either a data key or a key provider, not both")
	case k.DEK != nil:
		if len(k.DEK) != keys.DEKSize {
			return nil, nil, fmt.Errorf("data key is %d bytes, want %d", len(k.DEK), keys.DEKSize)
		}
		dek = append([]byte(nil), k.DEK...)
	case k.Provider != nil:
		b := m.Binding()
		if opts.ExpectDigest != "" {
			if m.ModelDigest != opts.ExpectDigest {
				return nil, nil, fmt.Errorf("%w: the bundle holds %s, expected %s", ErrDigestMismatch, m.ModelDigest, opts.ExpectDigest)
			}
			b.ModelDigest = opts.ExpectDigest
		}
		if dek, err = UnwrapDEK(ctx, m.Key, b, k.Provider); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, errors.New("no key: give a data key or a key provider")
	}
	if err := m.Authenticate(dek); err != nil {
		clear(dek)
		return nil, nil, err
	}
	if opts.ExpectDigest != "" && m.ModelDigest != opts.ExpectDigest {
		clear(dek)
		return nil, nil, fmt.Errorf("%w: the bundle holds %s, expected %s", ErrDigestMismatch, m.ModelDigest, opts.ExpectDigest)
	}
	return m, dek, nil
}

// prepareDest checks that dest is a memory-backed directory (or creates it
// in a memory-backed parent) and removes what a killed run left behind.
func prepareDest(dest string, allowDisk bool) (created bool, err error) {
	info, err := os.Stat(dest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := checkMemoryBacked(filepath.Dir(dest), dest, allowDisk); err != nil {
			return false, err
		}
		if err := os.Mkdir(dest, 0o755); err != nil {
			return false, fmt.Errorf("creating DEST: %w", err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("DEST: %w", err)
	case !info.IsDir():
		return false, fmt.Errorf("DEST %s is not a directory", dest)
	}
	if err := checkMemoryBacked(dest, dest, allowDisk); err != nil {
		return false, err
	}
	entries, err := os.ReadDir(dest)
	if err != nil {
		return false, fmt.Errorf("reading DEST: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			if err := os.RemoveAll(filepath.Join(dest, e.Name())); err != nil {
				return false, fmt.Errorf("removing the leftovers of an earlier run: %w", err)
			}
		}
	}
	return false, nil
}

func checkMemoryBacked(dir, dest string, allowDisk bool) error {
	if allowDisk {
		return nil
	}
	ok, fsName, err := MemoryBacked(dir)
	if err != nil {
		return fmt.Errorf("checking the file system of DEST %s: %w", dest, err)
	}
	if !ok {
		return fmt.Errorf("DEST %s is on %s, not on a memory-backed file system (tmpfs or ramfs), so plaintext weights would reach disk: "+
			"mount an emptyDir with medium: Memory there, or pass --allow-disk if that is really intended", dest, fsName)
	}
	return nil
}

// topLevelNames lists the entries the bundle creates directly in DEST.
func topLevelNames(m *Manifest) []string {
	seen := map[string]bool{}
	var names []string
	for _, f := range m.Files {
		top, _, _ := strings.Cut(f.Path, "/")
		if !seen[top] {
			seen[top] = true
			names = append(names, top)
		}
	}
	return names
}

// moveIntoPlace renames the unsealed entries from tmp into dest. If a rename
// fails it removes the entries already moved, so that an error never leaves
// part of the model behind.
func moveIntoPlace(tmp, dest string, names []string) error {
	var moved []string
	for _, name := range names {
		target := filepath.Join(dest, name)
		if err := os.RemoveAll(target); err != nil {
			return rollback(moved, fmt.Errorf("replacing %s in DEST: %w", name, err))
		}
		if err := os.Rename(filepath.Join(tmp, name), target); err != nil {
			return rollback(moved, fmt.Errorf("moving %s into DEST: %w", name, err))
		}
		moved = append(moved, target)
	}
	return nil
}

func rollback(moved []string, err error) error {
	for _, p := range moved {
		if rerr := os.RemoveAll(p); rerr != nil {
			err = fmt.Errorf("%w; also failed to remove %s: %v", err, p, rerr)
		}
	}
	return err
}

// dirSink writes plaintext files under a directory through os.Root, so that
// no path from a manifest can write outside it (paths are validated too).
type dirSink struct {
	root *os.Root
}

func newDirSink(dir string) (*dirSink, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("opening the temporary directory: %w", err)
	}
	return &dirSink{root: root}, nil
}

func (s *dirSink) create(f *File) (plainFile, error) {
	name := filepath.FromSlash(f.Path)
	if dir := path.Dir(f.Path); dir != "." {
		if err := s.root.MkdirAll(filepath.FromSlash(dir), 0o755); err != nil {
			return nil, fmt.Errorf("%s: creating directory: %w", f.Path, err)
		}
	}
	// Read-only: the model server mounts the volume read-only anyway, and
	// nothing should modify verified weights.
	out, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("%s: creating plaintext file: %w", f.Path, err)
	}
	if err := out.Truncate(f.Size); err != nil {
		out.Close()
		return nil, fmt.Errorf("%s: sizing plaintext file: %w", f.Path, err)
	}
	return out, nil
}
