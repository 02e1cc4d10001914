package seal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/modelguard/modelguard/internal/keys"
)

// Bounds on what a reader parses before it can authenticate anything, so
// that a hostile manifest costs time and memory linear in its size, and no
// more than these allow (docs/sealed-format.md §5).
const (
	// MaxManifestSize bounds the manifest file.
	MaxManifestSize = 64 << 20
	// MaxFiles bounds the number of files in a bundle.
	MaxFiles = 1 << 16
	// MaxPathLen bounds a path in bytes, and MaxPathDepth its number of
	// elements.
	MaxPathLen   = 4096
	MaxPathDepth = 64
	// maxSealedByLen and maxKeyIDLen bound the printed strings of the
	// manifest that have no fixed form.
	maxSealedByLen = 256
	maxKeyIDLen    = 512
	maxProviderLen = 64
)

// ErrManifestAuth means the manifest's MAC did not verify under the data key.
var ErrManifestAuth = errors.New("manifest failed authentication: it was modified, or the data key is not this bundle's")

// Manifest describes a sealed bundle. Everything in it is readable without a
// key; its integrity is proven by a MAC under the bundle's DEK (Authenticate).
type Manifest struct {
	Format    string    `json:"format"`
	Version   int       `json:"version"`
	BundleID  string    `json:"bundleId"`
	CreatedAt time.Time `json:"createdAt"`
	// SealedBy names the program that sealed the bundle, for forensics.
	SealedBy  string    `json:"sealedBy,omitempty"`
	Cipher    string    `json:"cipher"`
	Key       KeyInfo   `json:"key"`
	Ownership Ownership `json:"ownership"`
	// ModelDigest is "sha256:" and the hex SHA-256 of the sorted list of
	// file digests and paths (see docs/sealed-format.md).
	ModelDigest string `json:"modelDigest"`
	// DigestLeafSize is the leaf size of the file digests.
	DigestLeafSize int    `json:"digestLeafSize"`
	Files          []File `json:"files"`

	// signed holds the exact manifest bytes the MAC covers, and mac the MAC,
	// when the manifest was parsed from a file.
	signed []byte
	mac    []byte
}

// KeyInfo records how the DEK is wrapped. The wrapped DEK is not secret: it
// opens only with the KEK.
type KeyInfo struct {
	// Provider is the key provider's kind, e.g. "kek".
	Provider string `json:"provider"`
	// ID identifies the KEK, e.g. "kek:0123456789abcdef".
	ID string `json:"id"`
	// WrappedDEK is the DEK encrypted by the provider (base64 in JSON).
	WrappedDEK []byte `json:"wrappedDek"`
}

// Ownership records the legal owner given at seal time.
type Ownership struct {
	Owner          string `json:"owner,omitempty"`
	License        string `json:"license,omitempty"`
	Copyright      string `json:"copyright,omitempty"`
	Classification string `json:"classification,omitempty"`
}

// Classifications are the accepted Ownership.Classification values; the
// same enum as the ProtectedModel API.
var Classifications = []string{"Public", "Internal", "Confidential", "TradeSecret"}

// File is one sealed file.
type File struct {
	// Path is the file's slash-separated path relative to the model root.
	Path string `json:"path"`
	// Size is the plaintext size in bytes.
	Size int64 `json:"size"`
	// ChunkSize is the plaintext size of each chunk but the last.
	ChunkSize int `json:"chunkSize"`
	// Salt is the file's HKDF salt (base64 in JSON).
	Salt []byte `json:"salt"`
	// Digest is "sha256:" and the hex SHA-256 of the concatenated SHA-256
	// hashes of the file's 1 MiB leaves (see docs/sealed-format.md).
	Digest string `json:"digest"`
}

// SealedPath is the path of the file's sealed form inside the bundle.
func (f *File) SealedPath() string { return f.Path + SealedSuffix }

// ParseManifest parses and validates a manifest file without a key. The
// result is not yet authenticated: call Authenticate with the DEK before
// trusting it.
func ParseManifest(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("manifest is %d bytes, more than the %d accepted", len(data), MaxManifestSize)
	}
	body, macLine, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return nil, errors.New("manifest: want two lines, the manifest and its MAC")
	}
	macLine = bytes.TrimSuffix(macLine, []byte("\n"))
	if bytes.IndexByte(macLine, '\n') >= 0 {
		return nil, errors.New("manifest: unexpected data after the MAC line")
	}
	var macDoc struct {
		MAC string `json:"mac"`
	}
	if err := strictUnmarshal(macLine, &macDoc); err != nil {
		return nil, fmt.Errorf("manifest MAC line: %w", err)
	}
	mac, err := decodeMAC(macDoc.MAC)
	if err != nil {
		return nil, err
	}
	if err := requireCanonical(macLine, macDoc); err != nil {
		return nil, fmt.Errorf("manifest MAC line: %w", err)
	}
	m := &Manifest{}
	if err := strictUnmarshal(body, m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	// The MAC covers line 1's bytes, and readers other than this one (jq, a
	// person) read those bytes: they must say exactly what m says. Re-encoding
	// refuses duplicate keys, keys differing only in case (Go's decoder
	// matches them), reordered fields and extra whitespace.
	if err := requireCanonical(body, m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	m.signed = body
	m.mac = mac
	return m, nil
}

// ReadManifest reads and parses the manifest of the bundle at location, a
// directory or an https URL; client is used for URLs (nil means a default
// client). The result is not authenticated; UnwrapDEK and Authenticate do
// that.
func ReadManifest(ctx context.Context, location string, client HTTPDoer) (*Manifest, error) {
	src, err := openBundle(location, client)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	return readManifest(ctx, src)
}

// ReadManifestFile is ReadManifest that also returns the manifest file's
// exact bytes, which a program can store and authenticate later.
func ReadManifestFile(ctx context.Context, location string, client HTTPDoer) ([]byte, *Manifest, error) {
	src, err := openBundle(location, client)
	if err != nil {
		return nil, nil, err
	}
	defer src.Close()
	data, err := src.readManifest(ctx)
	if err != nil {
		return nil, nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, nil, err
	}
	return data, m, nil
}

func readManifest(ctx context.Context, src bundleSource) (*Manifest, error) {
	data, err := src.readManifest(ctx)
	if err != nil {
		return nil, err
	}
	return ParseManifest(data)
}

// Binding is what the manifest says its wrapped DEK is bound to. A reader
// that pins a model digest builds the binding with that digest instead (see
// ResolvedKey.Binding).
func (m *Manifest) Binding() keys.Binding {
	return keys.Binding{Version: m.Version, BundleID: m.BundleID, ModelDigest: m.ModelDigest}
}

// FormatDescription describes the manifest's format version for people:
// "format v2", or "format v1 (unbound key wrap)".
func (m *Manifest) FormatDescription() string { return FormatDescription(m.Version) }

// FormatDescription describes a format version for people, as inspect and
// the operator's status show it.
func FormatDescription(version int) string {
	if version < 2 {
		return fmt.Sprintf("format v%d (unbound key wrap)", max(version, 1))
	}
	return fmt.Sprintf("format v%d", version)
}

// UnwrapDEK unwraps the DEK recorded in info with p, bound to b. It checks
// first that p is the provider and key the bundle was sealed with, so that a
// wrong KEK gives a clear error naming both key IDs (fingerprints, not key
// bytes). From format version 2 the wrapping opens only for the bundle id
// and model digest in b: build b from the digest you expect (for the
// operator, spec.weights.digest), not from what the bundle claims.
func UnwrapDEK(ctx context.Context, info KeyInfo, b keys.Binding, p keys.Provider) ([]byte, error) {
	if info.Provider != p.Kind() {
		return nil, fmt.Errorf("the bundle's data key is wrapped by provider %q, not %q: %w", info.Provider, p.Kind(), keys.ErrWrongKey)
	}
	if info.ID != p.ID() {
		return nil, fmt.Errorf("wrong key: the bundle was sealed with key %s, this key is %s: %w", info.ID, p.ID(), keys.ErrWrongKey)
	}
	dek, err := p.Unwrap(ctx, info.WrappedDEK, b)
	if err != nil {
		return nil, fmt.Errorf("unwrapping the data key: %w", err)
	}
	if len(dek) != keys.DEKSize {
		clear(dek)
		return nil, fmt.Errorf("unwrapped data key is %d bytes, want %d", len(dek), keys.DEKSize)
	}
	return dek, nil
}

// Authenticate verifies the manifest's MAC under dek. Only a manifest parsed
// by ParseManifest or ReadManifest can be authenticated.
func (m *Manifest) Authenticate(dek []byte) error {
	if m.signed == nil {
		return errors.New("manifest was not read from a bundle, so it cannot be authenticated")
	}
	want, err := computeMAC(dek, m.signed)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, m.mac) {
		return fmt.Errorf("%s: %w", ManifestName, ErrManifestAuth)
	}
	return nil
}

// TotalSize is the plaintext size of all files.
func (m *Manifest) TotalSize() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// encode serializes the manifest and its MAC under dek: the manifest as one
// line of compact JSON, then {"mac":"hmac-sha256:<base64>"} on a second line.
// The MAC covers the first line's exact bytes, so no JSON canonicalization is
// needed to check it.
func (m *Manifest) encode(dek []byte) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding manifest: %w", err)
	}
	mac, err := computeMAC(dek, body)
	if err != nil {
		return nil, err
	}
	macLine, err := json.Marshal(map[string]string{"mac": macPrefix + base64.StdEncoding.EncodeToString(mac)})
	if err != nil {
		return nil, fmt.Errorf("encoding manifest MAC: %w", err)
	}
	out := make([]byte, 0, len(body)+len(macLine)+2)
	out = append(out, body...)
	out = append(out, '\n')
	out = append(out, macLine...)
	return append(out, '\n'), nil
}

const macPrefix = "hmac-sha256:"

func computeMAC(dek, body []byte) ([]byte, error) {
	key, err := manifestMACKey(dek)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	h := hmac.New(sha256.New, key)
	h.Write(body)
	return h.Sum(nil), nil
}

func decodeMAC(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, macPrefix)
	if !ok {
		return nil, fmt.Errorf("manifest MAC %q: want %s<base64>", truncate(s, 40), macPrefix)
	}
	mac, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(mac) != sha256.Size {
		return nil, fmt.Errorf("manifest MAC: want base64 of %d bytes", sha256.Size)
	}
	return mac, nil
}

// requireCanonical checks that data is exactly the compact JSON encoding of
// v, the form modelguard writes.
func requireCanonical(data []byte, v any) error {
	again, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("re-encoding: %w", err)
	}
	if !bytes.Equal(again, data) {
		return errors.New("not in canonical form: it must be exactly the compact JSON modelguard writes " +
			"(no duplicate keys, no keys differing only in case, fields in order, no extra whitespace)")
	}
	return nil
}

func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON object")
	}
	return nil
}

// validate checks everything that can be checked without a key, so that the
// unseal path can trust shapes (sizes, paths, counts) before it touches the
// file system. Its cost is linear in the manifest's size.
func (m *Manifest) validate() error {
	if m.Format != FormatName {
		return fmt.Errorf("format %q is not %q", truncate(m.Format, 64), FormatName)
	}
	if m.Version < MinFormatVersion || m.Version > FormatVersion {
		if m.Version > FormatVersion {
			return fmt.Errorf("format version %d is newer than this modelguard supports (%d): upgrade modelguard", m.Version, FormatVersion)
		}
		return fmt.Errorf("format version %d is not supported (want %d to %d)", m.Version, MinFormatVersion, FormatVersion)
	}
	if !validBundleID(m.BundleID) {
		return fmt.Errorf("bundleId %q is not 32 lowercase hex digits", truncate(m.BundleID, 40))
	}
	if err := checkText("sealedBy", m.SealedBy, maxSealedByLen); err != nil {
		return err
	}
	if m.Cipher != Cipher {
		return fmt.Errorf("cipher %q is not %q", truncate(m.Cipher, 64), Cipher)
	}
	if m.DigestLeafSize != DigestLeafSize {
		return fmt.Errorf("digestLeafSize %d is not %d", m.DigestLeafSize, DigestLeafSize)
	}
	if err := validateKeyInfo(m.Key); err != nil {
		return err
	}
	if err := validateOwnership(m.Ownership); err != nil {
		return err
	}
	if len(m.Files) == 0 {
		return errors.New("files: a bundle holds at least one file")
	}
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("files: %d files, more than the %d a bundle may hold", len(m.Files), MaxFiles)
	}
	for i := range m.Files {
		f := &m.Files[i]
		if err := ValidatePath(f.Path); err != nil {
			return fmt.Errorf("files[%d]: %w", i, err)
		}
		if i > 0 && m.Files[i-1].Path >= f.Path {
			return fmt.Errorf("files[%d]: %q is out of order or repeated: files are sorted by path", i, f.Path)
		}
		if f.Size < 0 || f.Size > 1<<50 {
			return fmt.Errorf("files[%d] %s: size %d is out of range", i, f.Path, f.Size)
		}
		if !validChunkSize(f.ChunkSize) {
			return fmt.Errorf("files[%d] %s: chunkSize %d is not a power of two between %d and %d", i, f.Path, f.ChunkSize, MinChunkSize, MaxChunkSize)
		}
		if len(f.Salt) != SaltSize {
			return fmt.Errorf("files[%d] %s: salt is %d bytes, want %d", i, f.Path, len(f.Salt), SaltSize)
		}
		if !validDigest(f.Digest) {
			return fmt.Errorf("files[%d] %s: digest %q is not sha256:<64 hex>", i, f.Path, truncate(f.Digest, 80))
		}
	}
	if _, err := checkPathTree(m.Files); err != nil {
		return fmt.Errorf("files: %w", err)
	}
	if !validDigest(m.ModelDigest) {
		return fmt.Errorf("modelDigest %q is not sha256:<64 hex>", truncate(m.ModelDigest, 80))
	}
	if want := ModelDigest(m.Files); m.ModelDigest != want {
		return fmt.Errorf("modelDigest %s does not match its files' digests (%s)", m.ModelDigest, want)
	}
	return nil
}

// pathEdge names a path element under its parent directory's node.
type pathEdge struct {
	parent int
	name   string
}

// checkPathTree refuses a path that is both a file and the directory of
// another file. It builds the tree of path elements, looking each element of
// each path up once under its parent, so its work is linear in the total
// length of the paths (a walk up with path.Dir per path would cost depth ×
// length). It returns that work, in bytes looked up, for a test to bound.
func checkPathTree(files []File) (work int, err error) {
	children := make(map[pathEdge]int, len(files))
	isFile := []bool{false} // node 0 is the root
	isDir := []bool{true}
	for i := range files {
		p := files[i].Path
		node := 0
		for start := 0; start <= len(p); {
			end := strings.IndexByte(p[start:], '/')
			last := end < 0
			if last {
				end = len(p)
			} else {
				end += start
			}
			edge := pathEdge{parent: node, name: p[start:end]}
			work += len(edge.name) + 1
			child, ok := children[edge]
			if !ok {
				child = len(isFile)
				children[edge] = child
				isFile, isDir = append(isFile, false), append(isDir, false)
			}
			switch {
			case last && isDir[child]:
				return work, fmt.Errorf("%q is a file and also the directory of other files", p)
			case !last && isFile[child]:
				return work, fmt.Errorf("%q is a file and also the directory of %q", p[:end], p)
			case last:
				isFile[child] = true
			default:
				isDir[child] = true
			}
			node = child
			start = end + 1
		}
	}
	return work, nil
}

func validateKeyInfo(k KeyInfo) error {
	if k.Provider == "" || k.ID == "" || len(k.WrappedDEK) == 0 {
		return errors.New("key: provider, id and wrappedDek are required")
	}
	if len(k.Provider) > maxProviderLen || strings.ContainsFunc(k.Provider, func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-'
	}) {
		return fmt.Errorf("key.provider: want at most %d of a-z, 0-9 and -", maxProviderLen)
	}
	if len(k.ID) > maxKeyIDLen || strings.ContainsFunc(k.ID, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return fmt.Errorf("key.id: want at most %d printable ASCII characters without spaces", maxKeyIDLen)
	}
	if len(k.WrappedDEK) > 4096 {
		return fmt.Errorf("key.wrappedDek is %d bytes, more than 4096", len(k.WrappedDEK))
	}
	return nil
}

// checkText refuses a printed string that is too long, not UTF-8, or holds
// control or bidirectional-override characters, which could rewrite a
// terminal or a log line.
func checkText(name, v string, maxLen int) error {
	if len(v) > maxLen || !printable(v) {
		return fmt.Errorf("%s: want at most %d characters of printable UTF-8", name, maxLen)
	}
	return nil
}

func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
	})
}

func validBundleID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

func validateOwnership(o Ownership) error {
	for name, v := range map[string]string{"owner": o.Owner, "license": o.License, "copyright": o.Copyright} {
		if err := checkText("ownership."+name, v, 1024); err != nil {
			return err
		}
	}
	if o.Classification != "" && !slices.Contains(Classifications, o.Classification) {
		return fmt.Errorf("ownership.classification %q: want one of %s", truncate(o.Classification, 40), strings.Join(Classifications, ", "))
	}
	return nil
}

// ValidatePath checks that p is a clean, relative, slash-separated path that
// every file system here can hold and that cannot escape the destination.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case len(p) > MaxPathLen:
		return fmt.Errorf("path of %d bytes is longer than %d", len(p), MaxPathLen)
	case strings.Count(p, "/") >= MaxPathDepth:
		return fmt.Errorf("path %q has %d elements, more than %d", truncate(p, 80), strings.Count(p, "/")+1, MaxPathDepth)
	case !utf8.ValidString(p):
		return fmt.Errorf("path %q is not valid UTF-8", p)
	case !printable(p):
		return fmt.Errorf("path %q contains a control character", p)
	case strings.Contains(p, `\`):
		return fmt.Errorf("path %q contains a backslash", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is absolute", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %q is not clean", p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == ".." || seg == "." {
			return fmt.Errorf("path %q has a %q element", p, seg)
		}
		if len(seg)+len(SealedSuffix) > 255 {
			return fmt.Errorf("path %q has an element longer than %d bytes", p, 255-len(SealedSuffix))
		}
	}
	return nil
}

func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
