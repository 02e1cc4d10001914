package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The node's dynamic volumes live on an ext4 filesystem of their own, with the
// "encrypt" feature, so that kernel fscrypt can encrypt each `encrypted`
// volume under its own key. The machine's root filesystem lacks that feature
// (and cannot be changed from here), so the filesystem is a sparse image file
// in the run dir on a loop device. Its keys live only in the kernel, in the
// filesystem's keyring: unmounting it wipes any that are left.

// VolumesImageSize is the sparse image's size; only what volumes write takes
// disk space.
const VolumesImageSize = 4 << 30

// VolumesImage is the image file whose bytes are the volumes' bytes on disk.
func (c Config) VolumesImage() string { return filepath.Join(c.runDir(), "volumes.img") }

// VolumesDir is where the volumes filesystem is mounted; each volume is a
// directory in it.
func (c Config) VolumesDir() string { return filepath.Join(c.runDir(), "volumes") }

// setupVolumes creates, formats and mounts the volumes filesystem. The loop
// device is recorded before it is attached, by the image it serves, so that
// Down finds it even when the run died in between.
func (c *Cluster) setupVolumes(ctx context.Context) error {
	img, dir := c.cfg.VolumesImage(), c.cfg.VolumesDir()
	c.mu.Lock()
	c.rec.LoopImages = append(c.rec.LoopImages, img)
	c.mu.Unlock()
	if err := c.saveRecords(); err != nil {
		return err
	}
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("creating the volumes image: %w", err)
	}
	err = f.Truncate(VolumesImageSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sizing the volumes image: %w", err)
	}
	// No lazy inode-table init: it would keep writing in the background.
	// A small inode table keeps mkfs's writes to a few MiB.
	if _, err := run(ctx, time.Minute, nil, "mkfs.ext4", "-q", "-F", "-O", "encrypt", "-N", "32768", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", "-L", "modelguard-volumes", img); err != nil {
		return fmt.Errorf("formatting the volumes filesystem: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if _, err := run(ctx, 30*time.Second, nil, "mount", "-o", "loop,nodev,nosuid", img, dir); err != nil {
		return fmt.Errorf("mounting the volumes filesystem: %w", err)
	}
	return nil
}

// loopDevicesOf lists the loop devices attached to img, even after img was
// deleted (losetup then shows its backing file as "img (deleted)").
func loopDevicesOf(ctx context.Context, img string) ([]string, error) {
	out, err := run(ctx, 10*time.Second, nil, "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
	if err != nil {
		return nil, fmt.Errorf("listing loop devices: %w", err)
	}
	return parseLoopList(string(out), img), nil
}

// parseLoopList picks the devices backed by img from `losetup --list` output.
func parseLoopList(out, img string) []string {
	var devs []string
	for _, line := range strings.Split(out, "\n") {
		dev, back, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		back = strings.TrimSpace(back)
		if back == img || back == img+" (deleted)" {
			devs = append(devs, dev)
		}
	}
	return devs
}

// detachLoops detaches the loop devices of the recorded images; their
// filesystems have been unmounted by then.
func (c *Cluster) detachLoops(ctx context.Context, rec *Records) error {
	var errs []string
	for _, img := range rec.LoopImages {
		devs, err := loopDevicesOf(ctx, img)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		for _, dev := range devs {
			if _, err := run(ctx, 10*time.Second, nil, "losetup", "--detach", dev); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("detaching loop devices: %s", strings.Join(errs, "; "))
	}
	return nil
}

// leftoverLoops lists loop devices still attached to a recorded image.
func leftoverLoops(ctx context.Context, rec *Records) []string {
	var left []string
	for _, img := range rec.LoopImages {
		devs, err := loopDevicesOf(ctx, img)
		if err != nil {
			left = append(left, err.Error())
		}
		for _, d := range devs {
			left = append(left, fmt.Sprintf("loop device %s (%s)", d, img))
		}
	}
	return left
}

// volumeLeftovers lists what of the volumes is left once the run dir should
// be gone: the image (the volumes' bytes) or the mount point.
func (c Config) volumeLeftovers() []string {
	var left []string
	for _, p := range []string{c.VolumesImage(), c.VolumesDir()} {
		if fileExists(p) {
			left = append(left, "volumes "+p)
		}
	}
	return left
}

func (c Config) provisionerArgs() []string {
	return []string{
		"--kubeconfig=" + c.kubeconfigFor("local-volume-provisioner"),
		"--provisioner-name=" + ProvisionerName,
		"--root=" + c.VolumesDir(),
		"--node=" + c.NodeName,
	}
}

// logSays checks that a component's log has a line containing want.
func logSays(log, want string) error {
	data, err := os.ReadFile(log)
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), want) {
		return fmt.Errorf("%s does not say %q yet", log, want)
	}
	return nil
}
