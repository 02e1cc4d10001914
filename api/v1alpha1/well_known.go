package v1alpha1

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
