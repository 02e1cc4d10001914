package seal

import "github.com/modelguard/modelguard/internal/keys"

// ResolvedKey is what `modelguard resolve-key` reports in its termination
// message for the operator: the manifest's format version, bundle id, key
// record and model digest. All are readable without a key and none is
// secret; the wrapped DEK opens only with the KEK, which stays with the
// operator.
type ResolvedKey struct {
	// Version is the bundle's format version; 0 in a record from a
	// resolve-key older than format version 2, which means version 1.
	Version  int     `json:"version,omitempty"`
	BundleID string  `json:"bundleId,omitempty"`
	Key      KeyInfo `json:"key"`
	// ModelDigest is the digest the manifest claims. It is not
	// authenticated: compare it with the digest you expect, and unwrap with
	// Binding(expected).
	ModelDigest string `json:"modelDigest"`
}

// ResolvedKeyOf returns the key record of a manifest.
func ResolvedKeyOf(m *Manifest) ResolvedKey {
	return ResolvedKey{Version: m.Version, BundleID: m.BundleID, Key: m.Key, ModelDigest: m.ModelDigest}
}

// FormatVersion returns the record's format version, 1 for a record that
// names none.
func (rk ResolvedKey) FormatVersion() int { return max(rk.Version, 1) }

// Binding returns the binding to unwrap the record's DEK with, for the model
// digest the caller expects (the operator: spec.weights.digest). From format
// version 2 the DEK opens only if that digest and the record's bundle id are
// the ones it was wrapped for.
func (rk ResolvedKey) Binding(expectedDigest string) keys.Binding {
	return keys.Binding{Version: rk.FormatVersion(), BundleID: rk.BundleID, ModelDigest: expectedDigest}
}
