package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// flockWait takes an exclusive flock on path, polling until wait passes. It
// writes holder into the file so that whoever waits can say who holds it.
func flockWait(ctx context.Context, path, holder string, wait time.Duration, onWait func(current string)) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the lock %s: %w", path, err)
	}
	deadline := time.Now().Add(wait)
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		current, _ := os.ReadFile(path)
		if !told && onWait != nil {
			onWait(strings.TrimSpace(string(current)))
			told = true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			f.Close()
			return nil, fmt.Errorf("%s is held by %q; gave up after %s: %w", path, strings.TrimSpace(string(current)), wait, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(holder+"\n"), 0)
	return func() {
		_ = f.Truncate(0)
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// Reserve gives the caller the cluster for a whole session (a test run, the
// demo) so that another session on the same machine cannot tear it down
// under it: `run` and the demo bring up a fresh cluster and tear it down,
// which would break a session already running. A second session waits for
// the first, up to wait.
func (c *Cluster) Reserve(ctx context.Context, purpose string, wait time.Duration) (func(), error) {
	holder := fmt.Sprintf("%s (pid %d, since %s)", purpose, os.Getpid(), time.Now().Format(time.TimeOnly))
	return flockWait(ctx, filepath.Join(c.cfg.WorkDir, "session.lock"), holder, wait, func(current string) {
		c.logf("Waiting up to %s for the session using the cluster to end: %s", wait, current)
	})
}
