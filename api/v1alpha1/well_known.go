package v1alpha1

import (
	"maps"
	"slices"
	"strings"
)

// Key providers, as reported in status.protection.keyProvider.
const (
	// KeyProviderSecret is a KEK in a Kubernetes Secret (key.secretRef).
	KeyProviderSecret = "Secret"
	// KeyProviderAWSKMS is a KEK in AWS KMS (key.awsKms).
	KeyProviderAWSKMS = "AWSKMS"
	// KeyProviderVaultTransit is a KEK in Vault transit (key.vaultTransit).
	KeyProviderVaultTransit = "VaultTransit"
)

// Provider names the key provider that k selects, or "" when it selects none.
// The API server guarantees exactly one for stored objects.
func (k KeySource) Provider() string {
	switch {
	case k.SecretRef != nil:
		return KeyProviderSecret
	case k.AWSKMS != nil:
		return KeyProviderAWSKMS
	case k.VaultTransit != nil:
		return KeyProviderVaultTransit
	}
	return ""
}

// Ownership annotations that ModelGuard puts on every object it manages, so
// that whoever finds a copy of a workload (or its weights) can tell whose it
// is.
const (
	AnnotationOwner          = "modelguard.dev/owner"
	AnnotationLicense        = "modelguard.dev/license"
	AnnotationCopyright      = "modelguard.dev/copyright"
	AnnotationClassification = "modelguard.dev/classification"
	AnnotationPatents        = "modelguard.dev/patents"
	AnnotationWeightsDigest  = "modelguard.dev/weights-digest"
)

// Labels that ModelGuard puts on every object it manages.
const (
	LabelManagedBy   = "app.kubernetes.io/managed-by"
	LabelName        = "app.kubernetes.io/name"
	LabelModel       = "modelguard.dev/model"
	LabelTrainingJob = "modelguard.dev/training-job"
	LabelProtected   = "modelguard.dev/protected"
	// LabelDataKey marks the Secrets that hold unwrapped data keys, so that
	// the operator's cache watches only those.
	LabelDataKey = "modelguard.dev/data-key"

	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "modelguard"
)

// FieldManager is the server-side apply field manager of every ModelGuard
// write; the admission guard tells the operator's own changes by it.
const FieldManager = "modelguard"

// LabelComponent tells the pods of one workload apart by their role, e.g. a
// model's server pods from its key-resolve pods, so that a Service or a
// Deployment selects only its own.
const LabelComponent = "modelguard.dev/component"

// Component values of LabelComponent.
const (
	ComponentServer     = "server"
	ComponentKeyResolve = "key-resolve"
)

// Container names in the pods ModelGuard generates.
const (
	ContainerUnseal     = "unseal"
	ContainerServer     = "server"
	ContainerKeyResolve = "key-resolve"
)

// OwnershipAnnotations are the intellectual-property annotations that every
// object managed for a workload carries, pods included. Empty optional
// fields are still recorded (as empty strings) so that a sweep can tell "not
// given" from "forgotten by a builder".
func OwnershipAnnotations(o Ownership, weightsDigest string) map[string]string {
	return map[string]string{
		AnnotationOwner:          o.Owner,
		AnnotationLicense:        o.License,
		AnnotationCopyright:      o.Copyright,
		AnnotationClassification: string(o.Classification),
		// Patent numbers contain commas ("US 11,123,456 B2"), so the list
		// is joined with semicolons.
		AnnotationPatents:       strings.Join(o.Patents, "; "),
		AnnotationWeightsDigest: weightsDigest,
	}
}

// OwnershipAnnotationKeys are the keys of OwnershipAnnotations, sorted: the
// one list that builders, status checks and the admission guard share.
func OwnershipAnnotationKeys() []string {
	keys := slices.Collect(maps.Keys(OwnershipAnnotations(Ownership{}, "")))
	slices.Sort(keys)
	return keys
}
