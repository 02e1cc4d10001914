package seal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// HTTPDoer sends HTTP requests; *http.Client satisfies it.
type HTTPDoer interface {
	Do(*http.Request) (*http.Response, error)
}

// bundleSource is where a sealed bundle's bytes come from.
type bundleSource interface {
	readManifest(ctx context.Context) ([]byte, error)
	// open opens the sealed form of f.
	open(ctx context.Context, f *File) (*sealedReader, error)
	Close() error
}

// sealedReader reads one sealed file, either at offsets (a local file: the
// workers read their own chunks in parallel) or as a stream (a download: one
// reader feeds the workers, and no ciphertext is staged on disk).
type sealedReader struct {
	at     io.ReaderAt
	stream io.Reader
	// size is the sealed file's size, or -1 if a stream did not say.
	size  int64
	close func() error
}

// openBundle opens the bundle at location: an https URL or a directory.
func openBundle(location string, client HTTPDoer) (bundleSource, error) {
	switch {
	case strings.HasPrefix(location, "https://"):
		return newHTTPSource(location, client)
	case strings.Contains(location, "://"):
		return nil, fmt.Errorf("bundle %s: only https:// URLs and directories are supported", redactURL(location))
	}
	root, err := os.OpenRoot(location)
	if err != nil {
		return nil, fmt.Errorf("opening bundle directory: %w", err)
	}
	return &dirSource{root: root, dir: location}, nil
}

// dirSource reads a bundle directory through os.Root, so that a hostile
// bundle's symlinks cannot make unseal read files outside it.
type dirSource struct {
	root *os.Root
	dir  string
}

func (s *dirSource) readManifest(context.Context) ([]byte, error) {
	f, err := s.root.Open(ManifestName)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is not a sealed bundle: it has no %s", s.dir, ManifestName)
		}
		return nil, fmt.Errorf("opening manifest: %w", err)
	}
	defer f.Close()
	return readLimited(f, ManifestName)
}

func (s *dirSource) open(_ context.Context, file *File) (*sealedReader, error) {
	name := filepath.FromSlash(file.SealedPath())
	f, err := s.root.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: the sealed file %s is missing from the bundle", file.Path, file.SealedPath())
		}
		return nil, fmt.Errorf("%s: opening sealed file: %w", file.Path, err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", file.Path, err)
	}
	if !info.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: the sealed file %s is not a regular file", file.Path, file.SealedPath())
	}
	// Read with pread into the workers' own buffers, never mapped: see
	// openEngine.openUnit.
	return &sealedReader{at: f, size: info.Size(), close: f.Close}, nil
}

func (s *dirSource) Close() error { return s.root.Close() }

// httpSource streams a bundle from an https URL: base/modelguard.json and
// base/<path>.sealed.
type httpSource struct {
	base   *url.URL
	client HTTPDoer
}

func newHTTPSource(location string, client HTTPDoer) (*httpSource, error) {
	u, err := url.Parse(location)
	if err != nil {
		return nil, fmt.Errorf("bundle URL %s: %w", redactURL(location), err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("bundle URL %s has no host", redactURL(location))
	}
	if client == nil {
		client = DefaultHTTPClient(nil)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return &httpSource{base: u, client: client}, nil
}

// MaxRedirects bounds the redirects a bundle download follows.
const MaxRedirects = 5

// DefaultHTTPClient returns a client for https bundles built on transport
// (nil means a clone of http.DefaultTransport; set its TLSClientConfig for a
// private CA). It times out connecting and waiting for response headers,
// but not reading the body, which may be hundreds of gigabytes. It follows
// at most MaxRedirects redirects, and only to https URLs.
func DefaultHTTPClient(transport *http.Transport) *http.Client {
	if transport == nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	transport.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	transport.TLSHandshakeTimeout = 30 * time.Second
	transport.ResponseHeaderTimeout = 60 * time.Second
	return &http.Client{Transport: transport, CheckRedirect: checkRedirect}
}

// checkRedirect refuses a redirect to anything but https, before the request
// is sent, and more than MaxRedirects hops.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if req.URL.Scheme != "https" {
		return fmt.Errorf("refusing a redirect to %s: bundles are fetched over https only", redactURL(req.URL.String()))
	}
	if len(via) > MaxRedirects {
		return fmt.Errorf("more than %d redirects", MaxRedirects)
	}
	return nil
}

// checkFinalURL applies the redirect rules to a response from a caller's
// client, which may follow redirects its own way: the bytes must come from
// https, within MaxRedirects hops.
func checkFinalURL(resp *http.Response) error {
	hops := 0
	for r := resp.Request; r != nil && r.Response != nil; r = r.Response.Request {
		hops++
	}
	if resp.Request == nil || resp.Request.URL == nil {
		return nil
	}
	if resp.Request.URL.Scheme != "https" {
		return fmt.Errorf("it was redirected to %s: bundles are fetched over https only", redactURL(resp.Request.URL.String()))
	}
	if hops > MaxRedirects {
		return fmt.Errorf("it was redirected %d times, more than %d", hops, MaxRedirects)
	}
	return nil
}

func (s *httpSource) fileURL(p string) string {
	u := *s.base
	segs := strings.Split(p, "/")
	escaped := make([]string, len(segs))
	for i, seg := range segs {
		escaped[i] = url.PathEscape(seg)
	}
	u.Path = s.base.Path + "/" + p
	u.RawPath = s.base.EscapedPath() + "/" + strings.Join(escaped, "/")
	return u.String()
}

func (s *httpSource) get(ctx context.Context, what, p string) (*http.Response, error) {
	target := s.fileURL(p)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		// The client's error repeats the URL, which may carry a signed query.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s: fetching %s: %w", what, redactURL(target), err)
	}
	if err := checkFinalURL(resp); err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: fetching %s: %w", what, redactURL(target), err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: fetching %s: HTTP %s", what, redactURL(target), resp.Status)
	}
	return resp, nil
}

func (s *httpSource) readManifest(ctx context.Context) ([]byte, error) {
	resp, err := s.get(ctx, "manifest", ManifestName)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return readLimited(resp.Body, ManifestName)
}

func (s *httpSource) open(ctx context.Context, f *File) (*sealedReader, error) {
	resp, err := s.get(ctx, f.Path, f.SealedPath())
	if err != nil {
		return nil, err
	}
	return &sealedReader{stream: resp.Body, size: resp.ContentLength, close: resp.Body.Close}, nil
}

func (s *httpSource) Close() error { return nil }

func readLimited(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, MaxManifestSize)
	}
	return data, nil
}

// redactURL drops a URL's user info and query, which may hold credentials
// such as a pre-signed signature, before the URL goes into a message.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparseable URL>"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	u.Fragment = ""
	return u.String()
}
