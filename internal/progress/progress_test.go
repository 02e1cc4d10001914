package progress

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{1 << 20, "1.0 MiB"},
		{2<<30 + 1<<29, "2.5 GiB"},
		{3 << 40, "3.0 TiB"},
	}
	for _, tt := range tests {
		if got := Bytes(tt.n); got != tt.want {
			t.Errorf("Bytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestLine(t *testing.T) {
	tests := []struct {
		name        string
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{"start", 0, 2 << 30, 0, "unseal: 0 B of 2.0 GiB (0%), 0 B/s, ETA ?"},
		{"middle", 1 << 30, 2 << 30, 2 * time.Second, "unseal: 1.0 GiB of 2.0 GiB (50%), 512.0 MiB/s, ETA 2s"},
		{"done", 2 << 30, 2 << 30, 4 * time.Second, "unseal: 2.0 GiB of 2.0 GiB (100%), 512.0 MiB/s, ETA 0s"},
		{"empty model", 0, 0, time.Second, "unseal: 0 B of 0 B (100%), 0 B/s, ETA 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Line("unseal", tt.done, tt.total, tt.elapsed); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestBarLine(t *testing.T) {
	got := BarLine("seal", 1<<30, 2<<30, 2*time.Second, 80)
	// One column is left free: a line that fills the terminal wraps.
	if len(got) != 80-1 {
		t.Errorf("bar is %d columns, want 79: %q", len(got), got)
	}
	if !strings.HasPrefix(got, "seal [") || !strings.Contains(got, "]  50% 1.0 GiB / 2.0 GiB  512.0 MiB/s  ETA 2s") {
		t.Errorf("unexpected bar %q", got)
	}
	if filled := strings.Count(got, "="); filled == 0 || filled > 40 {
		t.Errorf("bar %q is not about half filled", got)
	}
	if narrow := BarLine("seal", 1, 2, time.Second, 20); strings.Contains(narrow, "[") {
		t.Errorf("a narrow terminal still gets a bar: %q", narrow)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"auto": Auto, "": Auto, "bar": Bar, "log": Lines, "none": Off} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseMode("fancy"); err == nil {
		t.Error("ParseMode accepted fancy")
	}
}

// syncBuffer is a bytes.Buffer safe for the meter's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMeterLines(t *testing.T) {
	var out syncBuffer
	// A buffer is not a terminal, so Auto means lines.
	m := New(&out, "verify", Auto, time.Millisecond)
	if m.Mode() != Lines {
		t.Fatalf("mode %v off a terminal, want Lines", m.Mode())
	}
	m.SetTotal(100)
	m.Start()
	m.Add(40)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "verify: 40 B of 100 B (40%)") && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	m.Finish()
	if !strings.Contains(out.String(), "verify: 40 B of 100 B (40%)") {
		t.Errorf("no progress line in %q", out.String())
	}
	if strings.ContainsAny(out.String(), "\r\x1b") {
		t.Errorf("log lines contain terminal control characters: %q", out.String())
	}
}

func TestMeterBarFinishes(t *testing.T) {
	var out syncBuffer
	m := New(&out, "unseal", Bar, time.Hour)
	m.SetTotal(10)
	m.Start()
	m.Add(10)
	m.Finish()
	got := out.String()
	if !strings.HasPrefix(got, "\runseal [") || !strings.HasSuffix(got, "\x1b[K\n") || !strings.Contains(got, "100%") {
		t.Errorf("final bar %q: want a redrawn, complete bar ending its line", got)
	}
}

func TestMeterOff(t *testing.T) {
	var out syncBuffer
	m := New(&out, "seal", Off, time.Millisecond)
	m.Start()
	m.Add(5)
	time.Sleep(5 * time.Millisecond)
	m.Finish()
	if out.String() != "" {
		t.Errorf("Off printed %q", out.String())
	}
}
