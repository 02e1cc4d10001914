package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Records are what a run changed on the host, written before each change so
// that a run killed at any point (a CI run at its time limit) can be undone by
// the next Up or Down from these records alone.
type Records struct {
	// Started is when the run began.
	Started time.Time `json:"started"`
	// Sysctls maps a /proc/sys path to its value before the run; "" marks a
	// key that did not exist.
	Sysctls map[string]string `json:"sysctls"`
	// Chains maps "iptables/nat" (tool/table) to the chains that existed
	// before the run; only chains created since then are ours to delete.
	Chains map[string][]string `json:"chains"`
	// IPSets existed before the run.
	IPSets []string `json:"ipSets"`
	// NFTables existed before the run ("ip nat"); iptables-nft creates the
	// tables it needs, and Down deletes those left bare.
	NFTables []string `json:"nfTables"`
	// CreatedBridge is set once the run created the pod bridge.
	CreatedBridge bool `json:"createdBridge"`
	// Cgroups are the kubelet's cgroup directories (one per hierarchy) that
	// did not exist before the run.
	Cgroups []string `json:"cgroups"`
	// CreatedDirs are host directories outside the work dir that did not exist
	// before the run and that the components create (e.g.
	// /var/log/containers, /run/containerd).
	CreatedDirs []string `json:"createdDirs"`
	// LoopImages are image files the run attaches to loop devices (the
	// volumes filesystem), recorded before they are attached.
	LoopImages []string `json:"loopImages,omitempty"`
	// Processes the run started, in start order.
	Processes []ProcessRecord `json:"processes"`
}

// ProcessRecord identifies a process the run started. The start time (in
// clock ticks since boot, from /proc/<pid>/stat) tells our process from a
// later one that reused the PID.
type ProcessRecord struct {
	Name      string `json:"name"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Path      string `json:"path"`
	Log       string `json:"log"`
}

// loadRecords returns the records of a run, or nil when there are none (the
// machine is as a Down or no run left it).
func loadRecords(path string) (*Records, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's records %s: %w", path, err)
	}
	var r Records
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("parsing the cluster's records %s (delete it only after checking the host by hand): %w", path, err)
	}
	return &r, nil
}

// save writes the records atomically: a crash mid-write must not lose them.
func (r *Records) save(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the cluster's records: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("writing the cluster's records: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing the cluster's records: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing the cluster's records: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing the cluster's records: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("saving the cluster's records: %w", err)
	}
	return nil
}

func (r *Records) process(name string) (ProcessRecord, bool) {
	for _, p := range r.Processes {
		if p.Name == name {
			return p, true
		}
	}
	return ProcessRecord{}, false
}
