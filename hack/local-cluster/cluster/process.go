package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// startedProcess is a component this run started.
type startedProcess struct {
	ProcessRecord
	// exited is closed when the process ends while the harness still runs;
	// err then says how it ended.
	exited chan struct{}
	err    error
}

// startProcess starts a component in its own session (so that a terminal's
// Ctrl-C or make's exit does not reach it: only Down stops it), with stdout
// and stderr appended to logs/<name>.log, and records it before returning.
func startProcess(name, path string, args []string, logDir string, env []string, record func(ProcessRecord) error) (*startedProcess, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s: binary %s is missing (run `make cluster-up`, which builds it): %w", name, path, err)
	}
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: opening its log %s: %w", name, logPath, err)
	}
	defer logFile.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: starting %s: %w", name, path, err)
	}
	start, err := processStartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s: reading its start time: %w", name, err)
	}
	sp := &startedProcess{
		ProcessRecord: ProcessRecord{Name: name, PID: cmd.Process.Pid, StartTime: start, Path: path, Log: logPath},
		exited:        make(chan struct{}),
	}
	if err := record(sp.ProcessRecord); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	go func() {
		sp.err = cmd.Wait()
		close(sp.exited)
	}()
	return sp, nil
}

// processStartTime reads a process's start time (clock ticks since boot,
// field 22 of /proc/<pid>/stat).
func processStartTime(pid int) (uint64, error) {
	_, start, err := readStat(pid)
	return start, err
}

// readStat returns a process's state letter and start time.
func readStat(pid int) (state string, start uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, err
	}
	return parseStat(string(data))
}

// parseStat parses /proc/<pid>/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted from the last ')'.
func parseStat(stat string) (state string, start uint64, err error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return "", 0, fmt.Errorf("malformed stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 {
		return "", 0, fmt.Errorf("malformed stat %q", stat)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("malformed start time in stat: %w", err)
	}
	return f[0], start, nil
}

// alive reports whether the recorded process still runs: same PID, same
// start time (not a reused PID), and not a zombie.
func (p ProcessRecord) alive() bool {
	state, start, err := readStat(p.PID)
	if err != nil {
		return false
	}
	return start == p.StartTime && state != "Z" && state != "X"
}

// stop ends a recorded process by PID: SIGTERM, then SIGKILL after timeout.
// It never signals a process that is not the recorded one.
func (p ProcessRecord) stop(timeout time.Duration) error {
	if !p.alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.Name, p.PID, err)
	}
	if waitGone(p, timeout) {
		return nil
	}
	if p.alive() {
		if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID, err)
		}
	}
	if !waitGone(p, 10*time.Second) {
		return fmt.Errorf("%s (pid %d) survived SIGKILL for 10s", p.Name, p.PID)
	}
	return nil
}

func waitGone(p ProcessRecord, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !p.alive() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !p.alive()
}

// processesMentioning lists live processes whose command line contains s.
// Down uses it to find what containerd started for this run (its shims carry
// our containerd socket path in their arguments), which the records cannot
// hold because containerd, not the harness, starts them.
func processesMentioning(s string) []ProcessRecord {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []ProcessRecord
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		state, start, err := readStat(pid)
		if err != nil || state == "Z" {
			continue
		}
		name := strings.SplitN(string(cmdline), "\x00", 2)[0]
		out = append(out, ProcessRecord{Name: filepath.Base(name), PID: pid, StartTime: start, Path: name})
	}
	return out
}

// tailFile returns the last n lines of a log, for error messages.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
