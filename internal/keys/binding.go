package keys

import (
	"fmt"
	"strconv"
)

// Binding names the bundle a wrapped data key belongs to. A provider binds
// the wrapping to it: the KEK as AES-GCM associated data (AAD), a KMS as its
// encryption context, Vault Transit as its associated data. A wrapped key
// then opens only for the bundle it was made for, so that a holder of one
// bundle's data key cannot mint other bundles that open under the KEK.
//
// Whoever unwraps builds the Binding from what it expects, not from what the
// bundle claims: the operator from spec.weights.digest.
type Binding struct {
	// Version is the sealed format version. Version 1 bundles have an unbound
	// wrapping: their AAD is a constant and the other fields are not used.
	Version int
	// BundleID is the manifest's bundleId, 32 lowercase hex digits.
	BundleID string
	// ModelDigest is the model digest, "sha256:<64 lowercase hex>".
	ModelDigest string
}

// v1WrapAAD is the constant AAD of format version 1's unbound wrapping.
const v1WrapAAD = "modelguard/v1 dek-wrap"

// Bound reports whether the binding ties the wrapped key to one bundle;
// format version 1's wrapping does not.
func (b Binding) Bound() bool { return b.Version >= 2 }

// AAD returns the associated data of the wrapping (docs/sealed-format.md
// §2.1): for version 2, "modelguard/v2 dek-wrap" ‖ 0x00 ‖ bundle id ‖ 0x00 ‖
// model digest.
func (b Binding) AAD() []byte {
	if !b.Bound() {
		return []byte(v1WrapAAD)
	}
	return []byte("modelguard/v" + strconv.Itoa(b.Version) + " dek-wrap\x00" + b.BundleID + "\x00" + b.ModelDigest)
}

// EncryptionContext returns the binding as key-value pairs, the form of a
// KMS encryption context. It is empty for an unbound (version 1) binding.
func (b Binding) EncryptionContext() map[string]string {
	if !b.Bound() {
		return nil
	}
	return map[string]string{
		"modelguard.dev/format-version": strconv.Itoa(b.Version),
		"modelguard.dev/bundle-id":      b.BundleID,
		"modelguard.dev/model-digest":   b.ModelDigest,
	}
}

// String describes the binding for error messages; none of it is secret.
func (b Binding) String() string {
	if !b.Bound() {
		return fmt.Sprintf("format v%d (unbound key wrap)", b.Version)
	}
	return fmt.Sprintf("format v%d bundle %s model %s", b.Version, b.BundleID, b.ModelDigest)
}
