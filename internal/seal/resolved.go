package seal

// ResolvedKey is what `modelguard resolve-key` reports in its termination
// message for the operator: the manifest's key record and model digest. Both
// are readable without a key and neither is secret; the wrapped DEK opens only
// with the KEK, which stays with the operator.
type ResolvedKey struct {
	Key         KeyInfo `json:"key"`
	ModelDigest string  `json:"modelDigest"`
}
