// Package images builds single-layer container images from static binaries,
// without Docker: go-containerregistry assembles the layer and config and
// writes a tarball that `ctr images import` loads into the node's
// containerd.
package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NonRootUID is the user images run as, so that pods pass Pod Security
// "restricted" (runAsNonRoot needs a numeric non-zero user).
const NonRootUID = 65532

// File is one file of an image.
type File struct {
	// Path inside the image, absolute.
	Path string
	// Source is the host file to copy; Content is used when Source is "".
	Source  string
	Content []byte
	Mode    int64
}

// Spec describes an image.
type Spec struct {
	Ref        string
	Files      []File
	Entrypoint []string
	Env        []string
}

// epoch makes layers reproducible: the same binaries give the same digest, so
// a rebuild that changed nothing is not re-imported.
var epoch = time.Unix(0, 0).UTC()

// baseFiles are what every image carries besides its binaries: a passwd entry
// naming the non-root user, and a world-writable /tmp.
func baseFiles() []File {
	return []File{
		{Path: "/etc/passwd", Content: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID)), Mode: 0o644},
		{Path: "/etc/group", Content: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRootUID)), Mode: 0o644},
	}
}

// layerTar returns the layer's tar: parent directories first, then the
// files, all owned by root with a fixed time.
func layerTar(files []File) ([]byte, error) {
	dirs := map[string]bool{"/tmp": true, "/home/nonroot": true}
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("image path %q must be absolute", f.Path)
		}
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	// Parents of the fixed directories.
	for d := range dirs {
		for p := path.Dir(d); p != "/"; p = path.Dir(p) {
			dirs[p] = true
		}
	}
	sortedDirs := make([]string, 0, len(dirs))
	for d := range dirs {
		sortedDirs = append(sortedDirs, d)
	}
	sort.Strings(sortedDirs)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range sortedDirs {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch}
		switch d {
		case "/tmp":
			hdr.Mode = 0o1777
		case "/home/nonroot":
			hdr.Uid, hdr.Gid, hdr.Mode = NonRootUID, NonRootUID, 0o700
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("writing directory %s: %w", d, err)
		}
	}
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		content := f.Content
		if f.Source != "" {
			data, err := os.ReadFile(f.Source)
			if err != nil {
				return nil, fmt.Errorf("reading %s for %s: %w", f.Source, f.Path, err)
			}
			content = data
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: mode, Size: int64(len(content)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.Path, err)
		}
		if _, err := tw.Write(content); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing the layer: %w", err)
	}
	return buf.Bytes(), nil
}

// Image assembles the image of spec.
func Image(spec Spec) (v1.Image, error) {
	layerBytes, err := layerTar(append(baseFiles(), spec.Files...))
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("building the layer of %s: %w", spec.Ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("adding the layer of %s: %w", spec.Ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the config of %s: %w", spec.Ref, err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = runtime.GOARCH
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.User = fmt.Sprintf("%d:%d", NonRootUID, NonRootUID)
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = append([]string{"PATH=/"}, spec.Env...)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting the config of %s: %w", spec.Ref, err)
	}
	return img, nil
}

// WriteTarball writes the image of spec to out (a docker-save style tarball,
// which `ctr images import` reads). It leaves out untouched when its content
// would not change, and reports whether it wrote.
func WriteTarball(spec Spec, out string) (bool, error) {
	img, err := Image(spec)
	if err != nil {
		return false, err
	}
	tag, err := name.NewTag(spec.Ref)
	if err != nil {
		return false, fmt.Errorf("image reference %q: %w", spec.Ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return false, fmt.Errorf("creating %s: %w", filepath.Dir(out), err)
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return false, fmt.Errorf("writing %s: %w", tmp, err)
	}
	same, err := sameContent(tmp, out)
	if err != nil {
		return false, err
	}
	if same {
		return false, os.Remove(tmp)
	}
	if err := os.Rename(tmp, out); err != nil {
		return false, fmt.Errorf("saving %s: %w", out, err)
	}
	return true, nil
}

func sameContent(a, b string) (bool, error) {
	ha, err := fileSHA256(a)
	if err != nil {
		return false, err
	}
	hb, err := fileSHA256(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return ha == hb, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// File names under the images dir (bin/images): the tarballs the local
// cluster imports, and the fake GPU device plugin, which runs on the host.
const (
	PauseTarball        = "pause.tar"
	DemoServerTarball   = "demo-server.tar"
	ModelGuardTarball   = "modelguard.tar"
	FakeGPUPluginBinary = "fake-gpu-plugin"
	CoreDNSTarball      = "coredns.tar"
	// ProvisionerBinary is the local-volume-provisioner, a host process.
	ProvisionerBinary = "local-volume-provisioner"
	// KueueTarball is built and imported only on demand (`local-cluster
	// kueue`), so Tarballs does not list it.
	KueueTarball = "kueue.tar"
)

// Tarballs lists the tarballs the local cluster imports from dir: pause, the
// demo server and CoreDNS always (the cluster reports them missing), the
// ModelGuard image when it was built.
func Tarballs(dir string) []string {
	out := []string{filepath.Join(dir, PauseTarball), filepath.Join(dir, DemoServerTarball), filepath.Join(dir, CoreDNSTarball)}
	if mg := filepath.Join(dir, ModelGuardTarball); fileExists(mg) {
		out = append(out, mg)
	}
	return out
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// References of the images the local cluster imports. Pods use them with
// imagePullPolicy Never (or IfNotPresent): there is no registry to pull from.
const (
	PauseRef      = "modelguard.local/pause:1"
	DemoServerRef = "modelguard.local/demo-server:dev"
	ModelGuardRef = "modelguard.local/modelguard:dev"
	// CoreDNSRef and KueueRef carry the upstream versions they are built
	// from (hack/tools/cluster, hack/tools/kueue).
	CoreDNSRef = "modelguard.local/coredns:" + CoreDNSVersion
	KueueRef   = "modelguard.local/kueue:" + KueueVersion
)

// Versions of the add-ons, as pinned in the tools modules' go.mod files
// (`make cluster-binaries` checks that they agree).
const (
	CoreDNSVersion = "v1.15.0"
	KueueVersion   = "v0.17.0"
)
