package seal

import (
	"bytes"
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
)

// Progress receives byte counts from Seal, Unseal and Verify. Add is called
// from several goroutines at once.
type Progress interface {
	SetTotal(bytes int64)
	Add(bytes int64)
}

type nopProgress struct{}

func (nopProgress) SetTotal(int64) {}
func (nopProgress) Add(int64)      {}

func defaultWorkers(n int) int {
	if n > 0 {
		return n
	}
	// GOMAXPROCS follows the container's CPU limit, so an init container
	// does not oversubscribe its node.
	return runtime.GOMAXPROCS(0)
}

// geometry is the layout of one file: chunks, and the units of work (one or
// more whole chunks covering whole digest leaves) that workers take.
type geometry struct {
	size    int64
	chunk   int64
	chunks  int64
	perUnit int64
	units   int64
}

func geometryOf(f *File) geometry {
	g := geometry{size: f.Size, chunk: int64(f.ChunkSize), chunks: chunkCount(f.Size, f.ChunkSize), perUnit: unitChunks(f.ChunkSize)}
	g.units = (g.chunks + g.perUnit - 1) / g.perUnit
	return g
}

// unit returns the chunks [first, end) of unit u.
func (g geometry) unit(u int64) (first, end int64) {
	first = u * g.perUnit
	return first, min(first+g.perUnit, g.chunks)
}

// plainRange returns the plaintext offset and length of chunks [first, end).
func (g geometry) plainRange(first, end int64) (off int64, n int) {
	off = first * g.chunk
	return off, int(min(end*g.chunk, g.size) - off)
}

func (g geometry) plainLen(i int64) int {
	_, n := g.plainRange(i, i+1)
	return n
}

func (g geometry) cipherOff(i int64) int64 { return int64(HeaderSize) + i*(g.chunk+TagSize) }

func (g geometry) cipherLen(first, end int64) int {
	_, n := g.plainRange(first, end)
	return n + int(end-first)*TagSize
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// runner collects the first failure of a parallel run and stops the rest.
type runner struct {
	ctx    context.Context
	cancel context.CancelFunc
	order  map[string]int

	mu    sync.Mutex
	first error
}

func newRunner(ctx context.Context, files []File) *runner {
	ctx, cancel := context.WithCancel(ctx)
	order := make(map[string]int, len(files))
	for i, f := range files {
		order[f.Path] = i
	}
	return &runner{ctx: ctx, cancel: cancel, order: order}
}

func (r *runner) fail(err error) {
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Once the run has failed, an error its cancellation caused (a download
	// cut short) says nothing about the bundle, whatever its place.
	if r.first != nil && errors.Is(err, context.Canceled) {
		return
	}
	if r.first == nil || before(err, r.first, r.order) {
		r.first = err
	}
	r.cancel()
}

func (r *runner) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first
}

// plainSink receives plaintext files; Verify has none.
type plainSink interface {
	create(f *File) (plainFile, error)
}

type plainFile interface {
	io.WriterAt
	io.Closer
}

// openEngine authenticates and decrypts every chunk of a bundle, in
// parallel, writing plaintext at offsets into sink (if any).
type openEngine struct {
	src      bundleSource
	m        *Manifest
	dek      []byte
	sink     plainSink
	workers  int
	progress Progress
	// skipPlaintextDigest skips hashing the decrypted plaintext. Only the
	// benchmarks set it, to measure what the hashing costs; no option of
	// the package or the CLI reaches it.
	skipPlaintextDigest bool
}

// openFile is one file in flight. It is closed when its last unit is done,
// so that the number of open files stays small whatever the bundle holds.
type openFile struct {
	f    *File
	g    geometry
	aead cipher.AEAD
	in   *sealedReader
	out  plainFile
	// leaves hashes the decrypted plaintext into the file digest.
	leaves *leafCombiner
	refs   atomic.Int64
	once   sync.Once
}

func (of *openFile) close() error {
	var err error
	of.once.Do(func() {
		if of.in != nil && of.in.close != nil {
			_ = of.in.close()
		}
		if of.out != nil {
			if cerr := of.out.Close(); cerr != nil {
				err = fmt.Errorf("%s: closing plaintext file: %w", of.f.Path, cerr)
			}
		}
	})
	return err
}

type openJob struct {
	file *openFile
	unit int64
	// in holds the unit's ciphertext when the dispatcher read it from a
	// stream; nil when the worker reads it itself at its offset.
	in []byte
}

func (e *openEngine) run(ctx context.Context) error {
	r := newRunner(ctx, e.m.Files)
	defer r.cancel()
	workers := defaultWorkers(e.workers)
	jobs := make(chan openJob)
	// Stream buffers: enough for every worker to hold one while the
	// dispatcher fills the next, and no more.
	pool := make(chan []byte, 2*workers)
	for range cap(pool) {
		pool <- nil
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { e.work(r, jobs, pool) })
	}
	files, err := e.dispatch(r, jobs, pool, workers)
	r.fail(err)
	close(jobs)
	wg.Wait()
	for _, of := range files {
		r.fail(of.close())
	}
	if err := r.err(); err != nil {
		return err
	}
	return ctx.Err()
}

// dispatch hands out the units of up to width files at a time, round-robin.
// A write to a tmpfs (or ext4) file holds that file's inode lock, so workers
// writing one file take turns; interleaving files lets them write in
// parallel. Within a file, units go out in order, so the error reported for
// a file is its first bad chunk. It returns every file it opened.
func (e *openEngine) dispatch(r *runner, jobs chan<- openJob, pool chan []byte, width int) ([]*openFile, error) {
	type cursor struct {
		of   *openFile
		next int64
	}
	var (
		opened []*openFile
		active []*cursor
		next   int
	)
	for {
		for len(active) < width && next < len(e.m.Files) {
			of, err := e.startFile(r, &e.m.Files[next])
			next++
			if of != nil {
				opened = append(opened, of)
			}
			if err != nil {
				return opened, err
			}
			active = append(active, &cursor{of: of})
		}
		if len(active) == 0 {
			return opened, nil
		}
		for i := 0; i < len(active); {
			c := active[i]
			if err := e.dispatchUnit(r, c.of, c.next, jobs, pool); err != nil {
				return opened, err
			}
			c.next++
			if c.next < c.of.g.units {
				i++
				continue
			}
			if err := e.finishFile(r, c.of); err != nil {
				return opened, err
			}
			active = append(active[:i], active[i+1:]...)
		}
	}
}

// startFile opens a file's sealed and plaintext sides and checks its header
// and size.
func (e *openEngine) startFile(r *runner, f *File) (*openFile, error) {
	if err := r.ctx.Err(); err != nil {
		return nil, err
	}
	in, err := e.src.open(r.ctx, f)
	if err != nil {
		return nil, err
	}
	of := &openFile{f: f, g: geometryOf(f), in: in, leaves: newLeafCombiner()}
	// The header first: a file swapped in from elsewhere is best described
	// as foreign, not as the wrong size.
	if err := e.checkHeader(of); err != nil {
		return of, err
	}
	if want := sealedSize(f.Size, f.ChunkSize); in.size >= 0 && in.size != want {
		return of, sizeError(f, of.g, in.size, want)
	}
	if of.aead, err = fileKey(e.dek, f.Salt, f.Path); err != nil {
		return of, err
	}
	if e.sink != nil {
		if of.out, err = e.sink.create(f); err != nil {
			return of, err
		}
	}
	// One reference per unit, and one the dispatcher holds until it has
	// checked a stream's end.
	of.refs.Store(of.g.units + 1)
	return of, nil
}

// dispatchUnit hands unit u of of to a worker, reading its ciphertext first
// if the file is a stream.
func (e *openEngine) dispatchUnit(r *runner, of *openFile, u int64, jobs chan<- openJob, pool chan []byte) error {
	job := openJob{file: of, unit: u}
	if of.in.stream != nil {
		var buf []byte
		select {
		case buf = <-pool:
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
		first, end := of.g.unit(u)
		var err error
		if job.in, err = readStreamUnit(of, first, end, buf); err != nil {
			pool <- job.in
			return err
		}
	}
	select {
	case jobs <- job:
		return nil
	case <-r.ctx.Done():
		if job.in != nil {
			pool <- job.in
		}
		return r.ctx.Err()
	}
}

// finishFile checks that a stream ends after its last chunk and drops the
// dispatcher's reference.
func (e *openEngine) finishFile(r *runner, of *openFile) error {
	if of.in.stream != nil {
		var extra [1]byte
		if n, _ := io.ReadFull(of.in.stream, extra[:]); n > 0 {
			return &ChunkError{Path: of.f.Path, Chunk: of.g.chunks - 1, Err: ErrExtended}
		}
	}
	e.release(r, of)
	return nil
}

func (e *openEngine) checkHeader(of *openFile) error {
	hdr := make([]byte, HeaderSize)
	var n int
	var err error
	if of.in.at != nil {
		n, err = of.in.at.ReadAt(hdr, 0)
	} else {
		n, err = io.ReadFull(of.in.stream, hdr)
	}
	if n == HeaderSize {
		return compareHeader(e.m.Version, of.f, hdr)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &HeaderError{Path: of.f.Path, Detail: "the sealed file ends inside its header"}
	}
	return fmt.Errorf("%s: reading header: %w", of.f.Path, err)
}

// compareHeader explains how a header differs from the one the manifest
// of the given format version implies.
func compareHeader(version int, f *File, hdr []byte) error {
	want := encodeHeader(version, f.ChunkSize, f.Salt)
	n := magicSize
	switch {
	case bytes.Equal(hdr, want):
		return nil
	case !bytes.Equal(hdr[:n], want[:n]):
		return &HeaderError{Path: f.Path, Detail: fmt.Sprintf("bad magic: not a ModelGuard sealed file of format version %d", version)}
	case !bytes.Equal(hdr[n:n+4], want[n:n+4]):
		return &HeaderError{Path: f.Path, Detail: "its chunk size differs from the manifest's"}
	default:
		return &HeaderError{Path: f.Path, Detail: "its salt differs: the sealed file was swapped, replaced, or belongs to another bundle"}
	}
}

// sizeError names the chunk where a sealed file of the wrong size goes
// wrong.
func sizeError(f *File, g geometry, got, want int64) error {
	if got < int64(HeaderSize) {
		return &HeaderError{Path: f.Path, Detail: fmt.Sprintf("the sealed file is %d bytes, shorter than a header", got)}
	}
	if got > want {
		return &ChunkError{Path: f.Path, Chunk: g.chunks - 1, Err: ErrExtended,
			Detail: fmt.Sprintf("%d bytes more than the manifest implies", got-want)}
	}
	body := got - int64(HeaderSize)
	chunk := body / (g.chunk + TagSize)
	detail := fmt.Sprintf("the sealed file ends inside this chunk: %d bytes, the manifest implies %d", got, want)
	if body%(g.chunk+TagSize) == 0 {
		detail = fmt.Sprintf("the chunk is missing: the sealed file is %d bytes, the manifest implies %d", got, want)
	}
	return &ChunkError{Path: f.Path, Chunk: chunk, Err: ErrTruncated, Detail: detail}
}

// readStreamUnit reads chunks [first, end) from a stream into buf.
func readStreamUnit(of *openFile, first, end int64, buf []byte) ([]byte, error) {
	n := of.g.cipherLen(first, end)
	buf = grow(buf, n)
	got, err := io.ReadFull(of.in.stream, buf)
	if err == nil {
		return buf, nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		chunk := first + int64(got)/(of.g.chunk+TagSize)
		detail := "the sealed file ends inside this chunk"
		if int64(got)%(of.g.chunk+TagSize) == 0 {
			detail = "the chunk is missing: the sealed file ends before it"
		}
		return buf, &ChunkError{Path: of.f.Path, Chunk: chunk, Err: ErrTruncated, Detail: detail}
	}
	return buf, &ChunkError{Path: of.f.Path, Chunk: first, Err: fmt.Errorf("reading: %w", err)}
}

// release drops a reference to of. The last one, once every unit of the
// file was decrypted, compares the digest of the plaintext with the
// manifest's before the file is closed: the file is renamed into place only
// if every file's digest matched.
func (e *openEngine) release(r *runner, of *openFile) {
	if of.refs.Add(-1) != 0 {
		return
	}
	// After a failure some units were skipped, and the run fails anyway.
	if !e.skipPlaintextDigest && r.ctx.Err() == nil {
		if got := of.leaves.digest(); got != of.f.Digest {
			r.fail(&DigestError{Path: of.f.Path, Got: got, Want: of.f.Digest})
		}
	}
	r.fail(of.close())
}

func (e *openEngine) work(r *runner, jobs <-chan openJob, pool chan<- []byte) {
	var inBuf, outBuf []byte
	progress := e.progress
	if progress == nil {
		progress = nopProgress{}
	}
	for job := range jobs {
		// A job already handed out is always authenticated, even after
		// another failure, so that the error reported is the first bad chunk
		// in bundle order, not whichever a worker happened to hit first.
		n, err := e.openUnit(r, job, &inBuf, &outBuf)
		if job.in != nil {
			pool <- job.in
		}
		r.fail(err)
		if err == nil {
			progress.Add(int64(n))
		}
		e.release(r, job.file)
	}
}

func (e *openEngine) openUnit(r *runner, job openJob, inBuf, outBuf *[]byte) (n int, err error) {
	of, g := job.file, job.file.g
	first, end := g.unit(job.unit)
	// The ciphertext is always in a buffer of this worker's: GCM reads its
	// input twice (for GHASH and for CTR), so decrypting from memory another
	// process can write (a shared mapping of a file on a shared volume)
	// would let it change plaintext after authentication.
	in := job.in
	if in == nil {
		size := g.cipherLen(first, end)
		*inBuf = grow(*inBuf, size)
		in = *inBuf
		got, err := of.in.at.ReadAt(in, g.cipherOff(first))
		if got < size {
			if errors.Is(err, io.EOF) {
				return 0, &ChunkError{Path: of.f.Path, Chunk: first + int64(got)/(g.chunk+TagSize), Err: ErrTruncated,
					Detail: "the sealed file shrank while it was read"}
			}
			return 0, &ChunkError{Path: of.f.Path, Chunk: first, Err: fmt.Errorf("reading: %w", err)}
		}
	}
	off, plainLen := g.plainRange(first, end)
	*outBuf = grow(*outBuf, plainLen)
	out := *outBuf
	var nb [nonceSize]byte
	pos, cpos := 0, 0
	for i := first; i < end; i++ {
		pl := g.plainLen(i)
		nonce(&nb, i, i == g.chunks-1)
		if _, err := of.aead.Open(out[pos:pos], nb[:], in[cpos:cpos+pl+TagSize], nil); err != nil {
			return 0, &ChunkError{Path: of.f.Path, Chunk: i, Err: ErrAuthentication}
		}
		pos += pl
		cpos += pl + TagSize
	}
	// Hashed here, in the buffer no one else can write, in the same pass:
	// the file's digest must match the manifest's (see release).
	if !e.skipPlaintextDigest {
		of.leaves.addUnit(off, out[:plainLen])
	}
	// After a failure nothing more is written: it would only be removed.
	if of.out != nil && plainLen > 0 && r.ctx.Err() == nil {
		if _, err := of.out.WriteAt(out[:plainLen], off); err != nil {
			detail := ""
			if errors.Is(err, syscall.ENOSPC) {
				detail = "DEST is full: its memory volume must be larger than the model"
			}
			return 0, &ChunkError{Path: of.f.Path, Chunk: first, Err: fmt.Errorf("writing plaintext: %w", err), Detail: detail}
		}
	}
	return plainLen, nil
}
