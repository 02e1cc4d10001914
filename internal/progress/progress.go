// Package progress reports the progress of long byte-processing work
// (sealing, unsealing): a redrawn bar with bytes, rate and ETA on a
// terminal, and otherwise a plain line every few seconds, which reads well in
// pod logs.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// Mode selects how progress is shown.
type Mode int

const (
	// Auto is Bar on a terminal and Lines otherwise.
	Auto Mode = iota
	// Bar redraws one line in place.
	Bar
	// Lines prints a line at each interval.
	Lines
	// Off shows nothing.
	Off
)

// ParseMode parses the --progress flag: auto, bar, log or none.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "auto", "":
		return Auto, nil
	case "bar":
		return Bar, nil
	case "log":
		return Lines, nil
	case "none":
		return Off, nil
	}
	return Auto, fmt.Errorf("progress mode %q: want auto, bar, log or none", s)
}

// Meter counts bytes and reports them. SetTotal and Add are safe for
// concurrent use.
type Meter struct {
	w        io.Writer
	label    string
	mode     Mode
	interval time.Duration
	now      func() time.Time

	total atomic.Int64
	done  atomic.Int64

	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
}

// New returns a meter writing to w. Auto becomes Bar only when w is a
// terminal. interval is the time between lines in Lines mode (the bar is
// redrawn more often).
func New(w io.Writer, label string, mode Mode, interval time.Duration) *Meter {
	if mode == Auto {
		mode = Lines
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = Bar
		}
	}
	if mode == Bar {
		interval = 200 * time.Millisecond
	}
	return &Meter{w: w, label: label, mode: mode, interval: interval, now: time.Now}
}

// Mode returns the resolved mode.
func (m *Meter) Mode() Mode { return m.mode }

// SetTotal sets the number of bytes expected.
func (m *Meter) SetTotal(n int64) { m.total.Store(n) }

// Add counts n more bytes done.
func (m *Meter) Add(n int64) { m.done.Add(n) }

// Start starts reporting.
func (m *Meter) Start() {
	m.start = m.now()
	if m.mode == Off {
		return
	}
	m.stop = make(chan struct{})
	m.wg.Go(func() {
		t := time.NewTicker(m.interval)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.report()
			}
		}
	})
}

// Finish stops reporting. On a terminal it draws the final state and ends
// the bar's line, so that what follows starts on a fresh line.
func (m *Meter) Finish() {
	if m.stop == nil {
		return
	}
	close(m.stop)
	m.wg.Wait()
	m.stop = nil
	if m.mode == Bar {
		m.report()
		fmt.Fprintln(m.w)
	}
}

func (m *Meter) report() {
	done, total, elapsed := m.done.Load(), m.total.Load(), m.now().Sub(m.start)
	switch m.mode {
	case Bar:
		width := 80
		if f, ok := m.w.(*os.File); ok {
			if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 0 {
				width = w
			}
		}
		fmt.Fprint(m.w, "\r"+BarLine(m.label, done, total, elapsed, width)+"\x1b[K")
	case Lines:
		fmt.Fprintln(m.w, Line(m.label, done, total, elapsed))
	}
}

// Line is the plain progress line, e.g.
// "unseal: 1.2 GiB of 2.0 GiB (60%), 850.0 MiB/s, ETA 1s".
func Line(label string, done, total int64, elapsed time.Duration) string {
	rate := Rate(done, elapsed)
	return fmt.Sprintf("%s: %s of %s (%d%%), %s, ETA %s", label, Bytes(done), Bytes(total), percent(done, total), FormatRate(rate), ETA(done, total, rate))
}

// BarLine is the terminal progress bar, fitted to width columns.
func BarLine(label string, done, total int64, elapsed time.Duration, width int) string {
	rate := Rate(done, elapsed)
	stats := fmt.Sprintf(" %3d%% %s / %s  %s  ETA %s", percent(done, total), Bytes(done), Bytes(total), FormatRate(rate), ETA(done, total, rate))
	barWidth := width - len(label) - len(stats) - 4
	if barWidth < 10 {
		return label + stats
	}
	filled := barWidth
	if total > 0 {
		filled = int(int64(barWidth) * min(done, total) / total)
	}
	return label + " [" + strings.Repeat("=", filled) + strings.Repeat(" ", barWidth-filled) + "]" + stats
}

func percent(done, total int64) int64 {
	if total <= 0 {
		return 100
	}
	return min(100, done*100/total)
}

// Rate is bytes per second.
func Rate(done int64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(done) / elapsed.Seconds()
}

// ETA estimates the time left at the current rate; "?" before there is a
// rate to go by.
func ETA(done, total int64, rate float64) string {
	if done >= total {
		return "0s"
	}
	if rate <= 0 {
		return "?"
	}
	left := time.Duration(float64(total-done) / rate * float64(time.Second))
	return left.Round(time.Second).String()
}

// Bytes formats a size with binary units, e.g. "1.5 GiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit && exp < 5; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// FormatRate formats bytes per second, e.g. "850.0 MiB/s".
func FormatRate(bps float64) string { return Bytes(int64(bps)) + "/s" }
