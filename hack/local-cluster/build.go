package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// goBuild builds a static binary in the module at root; the Go build cache
// makes a warm run cheap.
func goBuild(ctx context.Context, root, pkg, out, ldflags string) error {
	args := []string{"build", "-trimpath", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	args = append(args, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// buildImages builds the test and ModelGuard binaries and their image
// tarballs into dir, and the fake GPU device plugin (a host process) beside
// them.
func buildImages(ctx context.Context, root, dir, ldflags string, withModelGuard bool, logf func(string, ...any)) error {
	began := time.Now()
	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", binDir, err)
	}
	type binary struct {
		pkg, out, ldflags string
		optional          bool
		// module is the module's directory relative to root, when not root.
		module string
	}
	binaries := []binary{
		{pkg: "./test/images/pause", out: filepath.Join(binDir, "pause")},
		{pkg: "./test/images/demo-server", out: filepath.Join(binDir, "demo-server")},
		{pkg: "./test/images/fake-gpu-plugin", out: filepath.Join(dir, images.FakeGPUPluginBinary)},
		// A host process; its module pins sig-storage-lib-external-provisioner.
		{pkg: "./local-volume-provisioner", out: filepath.Join(dir, images.ProvisionerBinary), module: "hack/tools/cluster"},
	}
	if withModelGuard {
		binaries = append(binaries,
			binary{pkg: "./cmd/manager", out: filepath.Join(binDir, "manager"), ldflags: ldflags},
			binary{pkg: "./cmd/modelguard", out: filepath.Join(binDir, "modelguard"), ldflags: ldflags, optional: true})
	} else {
		_ = os.Remove(filepath.Join(dir, images.ModelGuardTarball))
	}
	built := map[string]bool{}
	for _, b := range binaries {
		if b.optional {
			if _, err := os.Stat(filepath.Join(root, b.pkg)); err != nil {
				logf("Note: %s does not exist yet; the ModelGuard image is built without it", b.pkg)
				continue
			}
		}
		if err := goBuild(ctx, filepath.Join(root, b.module), b.pkg, b.out, b.ldflags); err != nil {
			return err
		}
		built[b.pkg] = true
	}

	specs := map[string]images.Spec{
		images.PauseTarball: {
			Ref:        images.PauseRef,
			Files:      []images.File{{Path: "/pause", Source: filepath.Join(binDir, "pause"), Mode: 0o755}},
			Entrypoint: []string{"/pause"},
		},
		images.DemoServerTarball: {
			Ref:        images.DemoServerRef,
			Files:      []images.File{{Path: "/demo-server", Source: filepath.Join(binDir, "demo-server"), Mode: 0o755}},
			Entrypoint: []string{"/demo-server"},
		},
	}
	mg := images.Spec{
		Ref:        images.ModelGuardRef,
		Files:      []images.File{{Path: "/manager", Source: filepath.Join(binDir, "manager"), Mode: 0o755}},
		Entrypoint: []string{"/manager"},
	}
	if built["./cmd/modelguard"] {
		mg.Files = append(mg.Files, images.File{Path: "/modelguard", Source: filepath.Join(binDir, "modelguard"), Mode: 0o755})
	}
	if withModelGuard {
		specs[images.ModelGuardTarball] = mg
	}
	// The add-ons, from binaries cached by version (hack/local-cluster/build-addon.sh).
	coredns := filepath.Join(root, "bin", "coredns", images.CoreDNSVersion, "coredns")
	if _, err := os.Stat(coredns); err != nil {
		return fmt.Errorf("CoreDNS %s is missing (`make cluster-binaries` builds it): %w", images.CoreDNSVersion, err)
	}
	specs[images.CoreDNSTarball] = images.Spec{
		Ref:        images.CoreDNSRef,
		Files:      []images.File{{Path: "/coredns", Source: coredns, Mode: 0o755}},
		Entrypoint: []string{"/coredns"},
	}
	// Kueue only when `make kueue` built it.
	if kueue := filepath.Join(root, "bin", "kueue", images.KueueVersion, "kueue"); fileExists(kueue) {
		specs[images.KueueTarball] = images.Spec{
			Ref:        images.KueueRef,
			Files:      []images.File{{Path: "/manager", Source: kueue, Mode: 0o755}},
			Entrypoint: []string{"/manager"},
		}
	}

	for file, spec := range specs {
		wrote, err := images.WriteTarball(spec, filepath.Join(dir, file))
		if err != nil {
			return err
		}
		if wrote {
			logf("Wrote %s (%s)", filepath.Join(dir, file), spec.Ref)
		}
	}
	logf("Binaries and images are current in %s (%.1fs)", dir, time.Since(began).Seconds())
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
