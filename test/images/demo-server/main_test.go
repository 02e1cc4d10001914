package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
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
