package cluster

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFlockWaitExcludesASecondHolderAndNamesTheFirst(t *testing.T) {
	path := filepath.Join(t.TempDir(), "session.lock")
	release, err := flockWait(context.Background(), path, "make test-e2e (pid 1)", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	var waitedOn string
	_, err = flockWait(context.Background(), path, "make demo (pid 2)", 300*time.Millisecond, func(current string) { waitedOn = current })
	if err == nil {
		t.Fatal("a second holder got the lock while the first held it")
	}
	if waitedOn != "make test-e2e (pid 1)" || !strings.Contains(err.Error(), "make test-e2e (pid 1)") {
		t.Errorf("waiter saw %q, error %q; both should name the holder", waitedOn, err)
	}
	release()
	release2, err := flockWait(context.Background(), path, "make demo (pid 2)", time.Second, nil)
	if err != nil {
		t.Fatalf("after release the lock is still held: %v", err)
	}
	release2()
}
