package seal

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/modelguard/modelguard/internal/keys"
)

func TestParseReport(t *testing.T) {
	tests := []struct {
		message string
		want    Report
		wantErr string
	}{
		{
			message: "ok digest=sha256:0a1b files=4 bytes=1048576 seconds=0.250 format=2",
			want:    Report{Reason: ReasonUnsealed, Digest: "sha256:0a1b", FormatVersion: 2, Files: 4, Bytes: 1048576, Seconds: 0.25},
		},
		{
			message: "ok digest=sha256:0a1b files=4 bytes=7 seconds=1 throughput=7B/s\n",
			want:    Report{Reason: ReasonUnsealed, Digest: "sha256:0a1b", Files: 4, Bytes: 7, Seconds: 1},
		},
		{
			message: "chunk 37 of model.safetensors failed authentication\n",
			want:    Report{Reason: ReasonTampered, Message: "chunk 37 of model.safetensors failed authentication"},
		},
		{
			message: "DEST /models is full",
			want:    Report{Reason: ReasonFailed, Message: "DEST /models is full"},
		},
		{message: "", wantErr: "empty unseal report"},
		{message: "ok digest=sha256:0a1b files=4", wantErr: "has no bytes"},
		{message: "ok bytes=12 seconds=soon", wantErr: "field seconds"},
		{message: "ok bytes=12 seconds", wantErr: "is not key=value"},
		{message: "ok bytes=-1 seconds=2", wantErr: "negative"},
		{message: "ok bytes=1 seconds=2 format=two", wantErr: "field format"},
	}
	for _, tc := range tests {
		t.Run(tc.message, func(t *testing.T) {
			got, err := ParseReport(tc.message)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseReport(%q) error = %v, want one containing %q", tc.message, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReport(%q) = %v", tc.message, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseReport(%q) (-want +got):\n%s", tc.message, diff)
			}
		})
	}
}

// TestReportRoundTrip checks that the reason FailureReport gives an error by
// its type is the one ParseReport recovers from the line, for every failure
// this package reports.
func TestReportRoundTrip(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		err  error
		want ReportReason
	}{
		{&ChunkError{Path: "model.safetensors", Chunk: 37, Err: ErrAuthentication}, ReasonTampered},
		{&ChunkError{Path: "a.bin", Chunk: 39, Err: ErrTruncated, Detail: "the chunk is missing"}, ReasonTampered},
		{&ChunkError{Path: "a.bin", Chunk: 40, Err: ErrExtended}, ReasonTampered},
		{&HeaderError{Path: "a.bin", Detail: "its salt differs"}, ReasonTampered},
		{fmt.Errorf("%s: %w", ManifestName, ErrManifestAuth), ReasonTampered},
		{&DigestError{Path: "a.bin", Got: digest, Want: digest}, ReasonTampered},
		{fmt.Errorf("%w: the bundle holds %s, expected %s", ErrDigestMismatch, digest, digest), ReasonDigestMismatch},
		{fmt.Errorf("wrong key: the bundle was sealed with key kek:01, this key is kek:02: %w", keys.ErrWrongKey), ReasonWrongKey},
		{fmt.Errorf("unwrapping the data key: key kek:01: %w", keys.ErrWrongKey), ReasonWrongKey},
		{fmt.Errorf("%w (PodSpecMismatch): key release for ProtectedModel nlp/m refused: pod nlp/x: container \"sidecar\" added", ErrKeyDenied), ReasonKeyDenied},
		{&ChunkError{Path: "a.bin", Chunk: 1, Err: errors.New("writing plaintext: no space left on device"), Detail: "DEST is full"}, ReasonFailed},
		{errors.New("DEST /models is on ext2/3/4, not on a memory-backed file system"), ReasonFailed},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			r := FailureReport(tt.err)
			if r.Reason != tt.want {
				t.Errorf("FailureReport reason %s, want %s", r.Reason, tt.want)
			}
			parsed, err := ParseReport(FormatReport(r) + "\n")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(r, parsed); diff != "" {
				t.Errorf("parsed report (-formatted +parsed):\n%s", diff)
			}
		})
	}
	ok := SuccessReport(&Result{Manifest: &Manifest{ModelDigest: digest, Version: 2}, Files: 3, Bytes: 1 << 31, Duration: 7250 * time.Millisecond})
	line := FormatReport(ok)
	if want := "ok digest=" + digest + " files=3 bytes=2147483648 seconds=7.250 format=2"; line != want {
		t.Errorf("success line %q, want %q", line, want)
	}
	parsed, err := ParseReport(line)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ok, parsed); diff != "" {
		t.Errorf("parsed success report (-formatted +parsed):\n%s", diff)
	}
	if long := FormatReport(FailureReport(errors.New(strings.Repeat("x ", 2000)))); len(long) > maxReportLine || strings.Contains(long, "\n") {
		t.Errorf("a long failure line is %d bytes", len(long))
	}
}
