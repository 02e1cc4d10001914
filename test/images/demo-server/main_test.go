package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestReportListsFilesWithDigests(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"config.json": `{"layers":2}`, "weights/model.safetensors": "not really weights", "empty": ""}
	for name, content := range files {
		if err := write([]string{filepath.Join(dir, name), content}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := buildReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []FileReport{
		{Path: "config.json", Size: 12, SHA256: sha(files["config.json"])},
		{Path: "empty", Size: 0, SHA256: sha("")},
		{Path: "weights/model.safetensors", Size: 18, SHA256: sha(files["weights/model.safetensors"])},
	}
	if diff := cmp.Diff(want, got.Files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
}

// fsTypeOf reads the mount table, an oracle independent of the statfs call the
// report makes.
func fsTypeOf(t *testing.T, dir string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	best, fstype := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		mp := fields[1]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, fstype = mp, fields[2]
		}
	}
	return fstype
}

func TestReportTellsTmpfsFromDisk(t *testing.T) {
	for _, dir := range []string{t.TempDir(), "/dev/shm"} {
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		got, err := buildReport(dir)
		if err != nil {
			t.Fatal(err)
		}
		want := fsTypeOf(t, dir) == "tmpfs"
		if got.Tmpfs != want {
			t.Errorf("report for %s says tmpfs=%v; the mount table says fs type %q", dir, got.Tmpfs, fsTypeOf(t, dir))
		}
	}
}

// TestServerAnswersWithDigestsNotWeights: an allowed client learns what the
// model directory holds (names, sizes, digests) and never gets its bytes,
// whatever path it asks for.
func TestServerAnswersWithDigestsNotWeights(t *testing.T) {
	dir := t.TempDir()
	const secret = "the trade-secret weights, byte for byte"
	if err := os.MkdirAll(dir+"/weights", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/weights/model.safetensors", []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newMux(dir))
	defer srv.Close()
	for _, path := range []string{"/", "/healthz", "/files/weights/model.safetensors", "/weights/model.safetensors",
		"/model.safetensors", "/files/", "/..%2fweights/model.safetensors", "/?download=weights/model.safetensors"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), secret) {
			t.Errorf("GET %s returned the weights' bytes", path)
		}
		if path == "/" && !strings.Contains(string(body), sha(secret)) {
			t.Errorf("GET / does not report the weights' digest: %s", body)
		}
	}
}
