package images

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestWriteTarballIsReproducibleAndLoadable(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "server")
	if err := os.WriteFile(bin, []byte("#!not really a binary\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := Spec{
		Ref:        "modelguard.local/test:1",
		Files:      []File{{Path: "/usr/bin/server", Source: bin, Mode: 0o755}},
		Entrypoint: []string{"/usr/bin/server"},
	}
	out := filepath.Join(dir, "img.tar")
	wrote, err := WriteTarball(spec, out)
	if err != nil || !wrote {
		t.Fatalf("first WriteTarball = %v, %v; want true, nil", wrote, err)
	}
	// The same inputs give the same bytes, so a warm build does not trigger a
	// re-import.
	wrote, err = WriteTarball(spec, out)
	if err != nil || wrote {
		t.Fatalf("second WriteTarball = %v, %v; want false (unchanged), nil", wrote, err)
	}

	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatalf("reading the tarball back: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || cfg.OS != "linux" {
		t.Errorf("user/os = %q/%q, want 65532:65532/linux", cfg.Config.User, cfg.OS)
	}
	if diff := cmp.Diff([]string{"/usr/bin/server"}, cfg.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = hdr
	}
	for name, mode := range map[string]int64{"usr/bin/server": 0o755, "etc/passwd": 0o644, "tmp/": 0o1777, "usr/": 0o755, "usr/bin/": 0o755} {
		hdr, ok := entries[name]
		if !ok {
			t.Errorf("layer lacks %s", name)
			continue
		}
		if hdr.Mode != mode {
			t.Errorf("%s mode = %o, want %o", name, hdr.Mode, mode)
		}
	}
}

func TestImageRejectsRelativePaths(t *testing.T) {
	_, err := Image(Spec{Ref: "modelguard.local/x:1", Files: []File{{Path: "relative", Content: []byte("x")}}})
	if err == nil {
		t.Error("accepted a relative image path")
	}
}
