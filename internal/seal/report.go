package seal

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/modelguard/modelguard/internal/keys"
)

// The unseal report is the one line `modelguard unseal` writes to its
// termination log, which the kubelet turns into the init container's
// termination message: the operator classifies failures from it and the
// metrics collector reads measurements from it. It is formatted and parsed
// here alone.
//
// On success:  ok digest=sha256:… files=N bytes=N seconds=S format=V
// On failure:  the error's message, unchanged, e.g.
//              chunk 37 of model.safetensors failed authentication
//
// A failure line is the message people read in WeightsVerified, so it
// carries no markup; ParseReport recovers its Reason from the wording of
// this package's errors, which FailureReport classifies by type.

// ReportReason classifies an unseal outcome.
type ReportReason string

const (
	// ReasonUnsealed: the bundle was authenticated, verified and unsealed.
	ReasonUnsealed ReportReason = "Unsealed"
	// ReasonTampered: a sealed file or the manifest was modified, moved,
	// truncated, extended or re-encrypted.
	ReasonTampered ReportReason = "Tampered"
	// ReasonDigestMismatch: the bundle holds another model than the pinned
	// digest names.
	ReasonDigestMismatch ReportReason = "DigestMismatch"
	// ReasonWrongKey: the key does not open the bundle's data key.
	ReasonWrongKey ReportReason = "WrongKey"
	// ReasonKeyDenied: the key-release service refused the pod its key.
	ReasonKeyDenied ReportReason = "KeyDenied"
	// ReasonFailed: anything else, e.g. an I/O error, a full volume, a
	// missing file or a refused destination.
	ReasonFailed ReportReason = "Failed"
)

// maxReportLine bounds a report line; the kubelet keeps 4096 bytes of
// termination message per container.
const maxReportLine = 1024

// Report is a parsed or to-be-written unseal report.
type Report struct {
	Reason ReportReason
	// Message is a failure's one-line message; empty on success.
	Message string

	// On success: the model digest, the format version (0 when a report
	// from an older unseal does not say), and what was unsealed.
	Digest        string
	FormatVersion int
	Files         int64
	Bytes         int64
	Seconds       float64
}

// OK reports whether the report is of a successful unseal.
func (r Report) OK() bool { return r.Reason == ReasonUnsealed }

// SuccessReport is the report of a finished Unseal.
func SuccessReport(res *Result) Report {
	return Report{
		Reason: ReasonUnsealed, Digest: res.Manifest.ModelDigest, FormatVersion: res.Manifest.Version,
		Files: int64(res.Files), Bytes: res.Bytes, Seconds: res.Duration.Seconds(),
	}
}

// FailureReport is the report of a failed Unseal, classified by the error's
// type.
func FailureReport(err error) Report {
	return Report{Reason: classifyError(err), Message: oneLine(err.Error())}
}

func classifyError(err error) ReportReason {
	switch {
	case errors.Is(err, ErrDigestMismatch):
		return ReasonDigestMismatch
	case errors.Is(err, ErrAuthentication), errors.Is(err, ErrManifestAuth), errors.Is(err, ErrTruncated),
		errors.Is(err, ErrExtended), errors.Is(err, ErrHeader), errors.Is(err, ErrPlaintextDigest):
		return ReasonTampered
	case errors.Is(err, keys.ErrWrongKey):
		return ReasonWrongKey
	case errors.Is(err, ErrKeyDenied):
		return ReasonKeyDenied
	}
	return ReasonFailed
}

// FormatReport returns the report's line, without a newline.
func FormatReport(r Report) string {
	if !r.OK() {
		return oneLine(r.Message)
	}
	line := fmt.Sprintf("ok digest=%s files=%d bytes=%d seconds=%.3f", r.Digest, r.Files, r.Bytes, r.Seconds)
	if r.FormatVersion > 0 {
		line += " format=" + strconv.Itoa(r.FormatVersion)
	}
	return line
}

// ParseReport parses a termination message. A line starting with "ok" is a
// success and must carry bytes= and seconds=, so that an error text is never
// mistaken for a measurement; any other non-empty line is a failure, with
// its Reason recovered from the message.
func ParseReport(message string) (Report, error) {
	message = strings.TrimSpace(message)
	fields := strings.Fields(message)
	if len(fields) == 0 {
		return Report{}, errors.New("empty unseal report")
	}
	if fields[0] != "ok" {
		return Report{Reason: classifyMessage(message), Message: message}, nil
	}
	r := Report{Reason: ReasonUnsealed}
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		key, value, ok := strings.Cut(f, "=")
		if !ok {
			return Report{}, fmt.Errorf("unseal report field %q is not key=value", f)
		}
		var err error
		switch key {
		case "digest":
			r.Digest = value
		case "files":
			r.Files, err = strconv.ParseInt(value, 10, 64)
		case "bytes":
			r.Bytes, err = strconv.ParseInt(value, 10, 64)
		case "seconds":
			r.Seconds, err = strconv.ParseFloat(value, 64)
		case "format":
			r.FormatVersion, err = strconv.Atoi(value)
		default:
			// Fields added by a newer unseal binary are not an error.
			continue
		}
		if err != nil {
			return Report{}, fmt.Errorf("unseal report field %s: %w", key, err)
		}
		seen[key] = true
	}
	for _, key := range []string{"bytes", "seconds"} {
		if !seen[key] {
			return Report{}, fmt.Errorf("unseal report %q has no %s", message, key)
		}
	}
	if r.Bytes < 0 || r.Seconds < 0 || r.Files < 0 {
		return Report{}, fmt.Errorf("unseal report %q has a negative measurement", message)
	}
	return r, nil
}

// failureWording maps the wording of this package's errors, as they appear
// in a failure line, to the reason FailureReport gives them; the first match
// wins. TestReportRoundTrip keeps the two in step.
var failureWording = []struct {
	text   string
	reason ReportReason
}{
	{ErrDigestMismatch.Error() + ":", ReasonDigestMismatch},
	{ErrPlaintextDigest.Error(), ReasonTampered},
	{" " + ErrAuthentication.Error(), ReasonTampered}, // chunks and the manifest
	{ErrTruncated.Error(), ReasonTampered},
	{ErrExtended.Error(), ReasonTampered},
	{"does not match the authenticated manifest", ReasonTampered}, // HeaderError
	{keys.ErrWrongKey.Error(), ReasonWrongKey},
	{ErrKeyDenied.Error() + " (", ReasonKeyDenied},
}

// classifyMessage recovers a failure line's reason. A message can quote a
// file path, which a hostile bundle chooses; the worst it can do is change
// which failure reason a failed unseal shows.
func classifyMessage(message string) ReportReason {
	for _, w := range failureWording {
		if strings.Contains(message, w.text) {
			return w.reason
		}
	}
	return ReasonFailed
}

// oneLine fits a message on one line of at most maxReportLine bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxReportLine {
		s = s[:maxReportLine-3] + "..."
	}
	return s
}
