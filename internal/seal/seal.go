package seal

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelguard/modelguard/internal/keys"
)

// SealOptions configure Seal and SealWithKey.
type SealOptions struct {
	// Provider wraps the bundle's fresh DEK; required by Seal, not used by
	// SealWithKey.
	Provider  keys.Provider
	Ownership Ownership
	// ChunkSize is the plaintext chunk size, a power of two between
	// MinChunkSize and MaxChunkSize; 0 means DefaultChunkSize.
	ChunkSize int
	// Workers is the number of parallel workers; 0 means GOMAXPROCS.
	Workers  int
	Progress Progress
	// SealedBy is recorded in the manifest, e.g. "modelguard v0.1.0".
	SealedBy string

	// rand and now are replaced by tests for reproducible bundles.
	rand io.Reader
	now  func() time.Time
}

// inputFile is a plaintext file found under the source directory.
type inputFile struct {
	path    string // slash-separated, relative to the source directory
	abs     string
	size    int64
	modTime time.Time
}

// NewDataKey returns a fresh random data key (DEK) for one bundle.
func NewDataKey() ([]byte, error) { return newDataKey(rand.Reader) }

func newDataKey(random io.Reader) ([]byte, error) {
	dek := make([]byte, keys.DEKSize)
	if _, err := io.ReadFull(random, dek); err != nil {
		return nil, fmt.Errorf("generating the data key: %w", err)
	}
	return dek, nil
}

// WrapFunc returns the key record of a bundle's DEK, wrapped for the bundle
// b names. SealWithKey calls it once, at the end, when the model digest is
// known: in process with ProviderWrap, or through the operator's key-release
// service for a pod that holds the DEK and no KEK.
type WrapFunc func(ctx context.Context, b keys.Binding) (KeyInfo, error)

// ProviderWrap returns a WrapFunc that wraps dek with p.
func ProviderWrap(p keys.Provider, dek []byte) WrapFunc {
	return func(ctx context.Context, b keys.Binding) (KeyInfo, error) {
		wrapped, err := p.Wrap(ctx, dek, b)
		if err != nil {
			return KeyInfo{}, fmt.Errorf("wrapping the data key with %s: %w", p.ID(), err)
		}
		return KeyInfo{Provider: p.Kind(), ID: p.ID(), WrappedDEK: wrapped}, nil
	}
}

// Seal encrypts every file under srcDir into a new bundle in outDir under a
// fresh data key that opts.Provider wraps. See SealWithKey.
func Seal(ctx context.Context, srcDir, outDir string, opts SealOptions) (*Manifest, error) {
	if opts.Provider == nil {
		return nil, errors.New("no key provider")
	}
	random := opts.rand
	if random == nil {
		random = rand.Reader
	}
	dek, err := newDataKey(random)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	return SealWithKey(ctx, srcDir, outDir, dek, ProviderWrap(opts.Provider, dek), opts)
}

// SealWithKey encrypts every file under srcDir into a new bundle in outDir,
// which must not exist or be empty, under dek (from NewDataKey; use each
// only once), and returns the manifest (its ModelDigest is what
// spec.weights.digest expects). When every file is sealed and the model
// digest known, wrap supplies the key record, bound to the bundle id and
// model digest. On error it removes what it wrote.
func SealWithKey(ctx context.Context, srcDir, outDir string, dek []byte, wrap WrapFunc, opts SealOptions) (m *Manifest, err error) {
	if len(dek) != keys.DEKSize {
		return nil, fmt.Errorf("%w: a data key must be %d bytes, got %d", keys.ErrInvalidKey, keys.DEKSize, len(dek))
	}
	if wrap == nil {
		return nil, errors.New("no way to wrap the data key")
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if !validChunkSize(opts.ChunkSize) {
		return nil, fmt.Errorf("chunk size %d is not a power of two between %d and %d", opts.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if err := validateOwnership(opts.Ownership); err != nil {
		return nil, err
	}
	if err := checkText("sealedBy", opts.SealedBy, maxSealedByLen); err != nil {
		return nil, err
	}
	random := opts.rand
	if random == nil {
		random = rand.Reader
	}
	now := opts.now
	if now == nil {
		now = time.Now
	}

	inputs, err := collectInputs(srcDir, outDir)
	if err != nil {
		return nil, err
	}
	if len(inputs) > MaxFiles {
		return nil, fmt.Errorf("SRC_DIR %s holds %d files, more than the %d a bundle may hold", srcDir, len(inputs), MaxFiles)
	}
	cleanup, err := prepareOutDir(outDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := cleanup(); cerr != nil {
				err = fmt.Errorf("%w; also failed to clean up %s: %v", err, outDir, cerr)
			}
		}
	}()

	bundleID := make([]byte, 16)
	if _, err := io.ReadFull(random, bundleID); err != nil {
		return nil, fmt.Errorf("generating the bundle id: %w", err)
	}
	m = &Manifest{
		Format:         FormatName,
		Version:        FormatVersion,
		BundleID:       hex.EncodeToString(bundleID),
		CreatedAt:      now().UTC().Truncate(time.Second),
		SealedBy:       opts.SealedBy,
		Cipher:         Cipher,
		Ownership:      opts.Ownership,
		DigestLeafSize: DigestLeafSize,
		Files:          make([]File, len(inputs)),
	}
	for i, in := range inputs {
		salt := make([]byte, SaltSize)
		if _, err := io.ReadFull(random, salt); err != nil {
			return nil, fmt.Errorf("generating a salt: %w", err)
		}
		m.Files[i] = File{Path: in.path, Size: in.size, ChunkSize: opts.ChunkSize, Salt: salt}
	}
	if opts.Progress != nil {
		opts.Progress.SetTotal(m.TotalSize())
	}
	e := &sealEngine{inputs: inputs, m: m, dek: dek, outDir: outDir, workers: opts.Workers, progress: opts.Progress}
	if err := e.run(ctx); err != nil {
		return nil, err
	}
	for i, in := range inputs {
		// A file that changed while it was read would be sealed as a mix of
		// two versions; refuse rather than record a digest of neither.
		info, err := os.Stat(in.abs)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", in.path, err)
		}
		if info.Size() != in.size || !info.ModTime().Equal(in.modTime) {
			return nil, fmt.Errorf("%s changed while it was sealed; seal again from a stable copy", in.path)
		}
		m.Files[i].Digest = e.digests[i]
	}
	m.ModelDigest = ModelDigest(m.Files)
	// Wrapped last, once the digest is known, so that the wrapping is bound
	// to this bundle and this model.
	if m.Key, err = wrap(ctx, m.Binding()); err != nil {
		return nil, err
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("internal error: the new manifest is invalid: %w", err)
	}
	data, err := m.encode(dek)
	if err != nil {
		return nil, err
	}
	// The manifest is written last and atomically: a bundle with a manifest
	// is complete.
	tmp := filepath.Join(outDir, ManifestName+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return nil, fmt.Errorf("writing manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(outDir, ManifestName)); err != nil {
		return nil, fmt.Errorf("writing manifest: %w", err)
	}
	parsed, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("internal error: re-reading the new manifest: %w", err)
	}
	return parsed, nil
}

// collectInputs lists the regular files under srcDir, sorted by path.
// Symlinks to files are followed (model caches such as Hugging Face's are
// symlink farms); anything else that is not a regular file is an error, so
// that nothing is silently left out.
func collectInputs(srcDir, outDir string) ([]inputFile, error) {
	srcAbs, err := filepath.Abs(srcDir)
	if err != nil {
		return nil, fmt.Errorf("SRC_DIR: %w", err)
	}
	outAbs, err := filepath.Abs(outDir)
	if err != nil {
		return nil, fmt.Errorf("OUT_DIR: %w", err)
	}
	if within(outAbs, srcAbs) {
		return nil, fmt.Errorf("OUT_DIR %s is inside SRC_DIR %s; put the bundle elsewhere", outDir, srcDir)
	}
	if within(srcAbs, outAbs) {
		return nil, fmt.Errorf("SRC_DIR %s is inside OUT_DIR %s", srcDir, outDir)
	}
	info, err := os.Stat(srcAbs)
	if err != nil {
		return nil, fmt.Errorf("SRC_DIR: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("SRC_DIR %s is not a directory", srcDir)
	}
	var inputs []inputFile
	err = filepath.WalkDir(srcAbs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(srcAbs, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if err := ValidatePath(rel); err != nil {
			return fmt.Errorf("cannot seal %s: %w", rel, err)
		}
		info, err := os.Stat(p) // follows a symlink
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		switch {
		case info.Mode().IsRegular():
		case info.IsDir():
			return fmt.Errorf("%s is a symlink to a directory; seal from a copy with real directories", rel)
		default:
			return fmt.Errorf("%s is not a regular file (%s)", rel, info.Mode().Type())
		}
		inputs = append(inputs, inputFile{path: rel, abs: p, size: info.Size(), modTime: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading SRC_DIR: %w", err)
	}
	if len(inputs) == 0 {
		return nil, fmt.Errorf("SRC_DIR %s holds no files", srcDir)
	}
	slices.SortFunc(inputs, func(a, b inputFile) int { return strings.Compare(a.path, b.path) })
	return inputs, nil
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// prepareOutDir creates outDir or checks that it is empty, and returns a
// function that undoes what sealing wrote there.
func prepareOutDir(outDir string) (func() error, error) {
	entries, err := os.ReadDir(outDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating OUT_DIR: %w", err)
		}
		return func() error { return os.RemoveAll(outDir) }, nil
	case err != nil:
		return nil, fmt.Errorf("OUT_DIR: %w", err)
	case len(entries) > 0:
		return nil, fmt.Errorf("OUT_DIR %s is not empty", outDir)
	}
	return func() error {
		entries, err := os.ReadDir(outDir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(outDir, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}, nil
}

// sealEngine reads, hashes and encrypts units of every file in parallel and
// writes them at their offsets.
type sealEngine struct {
	inputs   []inputFile
	m        *Manifest
	dek      []byte
	outDir   string
	workers  int
	progress Progress

	digests []string
}

type sealFile struct {
	f      *File
	g      geometry
	aead   cipher.AEAD
	in     readerAtCloser
	out    writerAtCloser
	leaves *leafCombiner
	refs   atomic.Int64
	once   sync.Once
	digest *string
}

func (sf *sealFile) close() error {
	var err error
	sf.once.Do(func() {
		sf.in.Close()
		if cerr := sf.out.Close(); cerr != nil {
			err = fmt.Errorf("%s: closing sealed file: %w", sf.f.Path, cerr)
		}
	})
	return err
}

type readerAtCloser interface {
	io.ReaderAt
	io.Closer
}

type writerAtCloser interface {
	io.WriterAt
	io.Closer
}

type sealJob struct {
	file *sealFile
	unit int64
}

func (e *sealEngine) run(ctx context.Context) error {
	r := newRunner(ctx, e.m.Files)
	defer r.cancel()
	e.digests = make([]string, len(e.inputs))
	jobs := make(chan sealJob)
	var files []*sealFile
	var wg sync.WaitGroup
	for range defaultWorkers(e.workers) {
		wg.Go(func() { e.work(r, jobs) })
	}
	for i := range e.inputs {
		if r.ctx.Err() != nil {
			break
		}
		sf, err := e.openFile(i)
		if sf != nil {
			files = append(files, sf)
		}
		if err == nil {
			sf.refs.Store(sf.g.units)
			for u := range sf.g.units {
				select {
				case jobs <- sealJob{file: sf, unit: u}:
				case <-r.ctx.Done():
				}
			}
		}
		if err != nil {
			r.fail(err)
			break
		}
	}
	close(jobs)
	wg.Wait()
	for _, sf := range files {
		r.fail(sf.close())
	}
	if err := r.err(); err != nil {
		return err
	}
	return ctx.Err()
}

func (e *sealEngine) openFile(i int) (*sealFile, error) {
	in, f := &e.inputs[i], &e.m.Files[i]
	src, err := os.Open(in.abs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", in.path, err)
	}
	outPath := filepath.Join(e.outDir, filepath.FromSlash(f.SealedPath()))
	if err := os.MkdirAll(filepath.Dir(outPath), 0o755); err != nil {
		src.Close()
		return nil, fmt.Errorf("%s: creating directory: %w", in.path, err)
	}
	out, err := os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("%s: creating sealed file: %w", in.path, err)
	}
	sf := &sealFile{f: f, g: geometryOf(f), in: src, out: out, leaves: newLeafCombiner(), digest: &e.digests[i]}
	if _, err := out.Write(encodeHeader(e.m.Version, f.ChunkSize, f.Salt)); err != nil {
		return sf, fmt.Errorf("%s: writing header: %w", in.path, err)
	}
	if err := out.Truncate(sealedSize(f.Size, f.ChunkSize)); err != nil {
		return sf, fmt.Errorf("%s: sizing sealed file: %w", in.path, err)
	}
	if sf.aead, err = fileKey(e.dek, f.Salt, f.Path); err != nil {
		return sf, err
	}
	return sf, nil
}

func (e *sealEngine) work(r *runner, jobs <-chan sealJob) {
	var plain, sealed []byte
	progress := e.progress
	if progress == nil {
		progress = nopProgress{}
	}
	for job := range jobs {
		if r.ctx.Err() != nil {
			continue
		}
		n, err := e.sealUnit(job, &plain, &sealed)
		if err != nil {
			r.fail(err)
			continue
		}
		progress.Add(int64(n))
		if job.file.refs.Add(-1) == 0 {
			*job.file.digest = job.file.leaves.digest()
			r.fail(job.file.close())
		}
	}
}

func (e *sealEngine) sealUnit(job sealJob, plainBuf, sealedBuf *[]byte) (int, error) {
	sf, g := job.file, job.file.g
	first, end := g.unit(job.unit)
	off, n := g.plainRange(first, end)
	*plainBuf = grow(*plainBuf, n)
	plain := *plainBuf
	if got, err := sf.in.ReadAt(plain, off); got < n {
		if errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("%s shrank while it was sealed; seal again from a stable copy", sf.f.Path)
		}
		return 0, fmt.Errorf("%s: reading at offset %d: %w", sf.f.Path, off, err)
	}
	sf.leaves.addUnit(off, plain)
	*sealedBuf = grow(*sealedBuf, g.cipherLen(first, end))
	out := (*sealedBuf)[:0]
	var nb [nonceSize]byte
	pos := 0
	for i := first; i < end; i++ {
		pl := g.plainLen(i)
		nonce(&nb, i, i == g.chunks-1)
		out = sf.aead.Seal(out, nb[:], plain[pos:pos+pl], nil)
		pos += pl
	}
	if _, err := sf.out.WriteAt(out, g.cipherOff(first)); err != nil {
		return 0, fmt.Errorf("%s: writing chunk %d: %w", sf.f.Path, first, err)
	}
	return n, nil
}
