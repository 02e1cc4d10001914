package v1alpha1

import (
	"maps"
	"slices"
	"strings"
)

// Key providers, as reported in status.protection.keyProvider: the kind of
// the ModelKey's provider.
const (
	// KeyProviderSecret is a KEK in a Secret of the operator's namespace.
	KeyProviderSecret = string(ModelKeyProviderSecret)
	// KeyProviderAWSKMS is a KEK in AWS KMS.
	KeyProviderAWSKMS = string(ModelKeyProviderAWSKMS)
	// KeyProviderVaultTransit is a KEK in Vault transit.
	KeyProviderVaultTransit = string(ModelKeyProviderVaultTransit)
)

// Key release: how the unseal init container of a protected pod reaches the
// operator's key-release service. The builders write these into the pod
// spec and `modelguard unseal --key-release` reads them, so that both sides
// share one list of names.
const (
	// KeyReleaseAudience is the audience of the projected ServiceAccount
	// token that only the unseal container mounts.
	KeyReleaseAudience = "modelguard-key-release"
	// KeyReleaseTokenVolume is the projected token's volume, mounted at
	// KeyReleaseTokenDir in the unseal container alone.
	KeyReleaseTokenVolume = "key-release-token"
	KeyReleaseTokenDir    = "/var/run/modelguard/key-release"
	KeyReleaseTokenFile   = "token"
	// KeyReleaseTokenSeconds is the token's lifetime: the kubelet's minimum.
	KeyReleaseTokenSeconds = 600
	// EnvKeyReleaseCA holds the PEM CA bundle the unseal container trusts
	// for the key-release service. It is in the pod spec, not a ConfigMap, so
	// a tenant cannot point the pod at a server of their own (the spec is
	// compared with the generated one before any key is released).
	EnvKeyReleaseCA = "MODELGUARD_KEY_RELEASE_CA"
	// EnvPodUID is the pod's UID, from the downward API.
	EnvPodUID = "MODELGUARD_POD_UID"
	// KeyReleaseServiceName is the default name of the Service in front of
	// every manager replica's key-release endpoint.
	KeyReleaseServiceName = "modelguard-key-release"
	// KeyReleasePort is the manager's key-release container port; the
	// Service maps 443 to it.
	KeyReleasePort = 8444
)

// OperatorPodLabels select the manager's pods, in the chart and in
// kustomize, so that a protected pod's NetworkPolicy admits egress to the
// key-release endpoint and nothing else of the operator.
func OperatorPodLabels() map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "modelguard",
		"app.kubernetes.io/component": "manager",
	}
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

	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "modelguard"
)

// LabelProtectedNamespace marks a namespace in which ModelGuard manages a
// protected workload. The operator sets it before any child exists and
// removes it with the last workload; the admission guard's
// ValidatingWebhookConfiguration selects namespaces by it (CONNECT requests
// such as exec carry no object, so objectSelector cannot scope them).
// Tenants bound to edit or admin cannot change a Namespace's labels.
const LabelProtectedNamespace = "modelguard.dev/protected-namespace"

// LabelPodSecurityEnforce is the Pod Security admission label a namespace
// needs, at baseline or restricted, before a model is served in it:
// otherwise a privileged or hostPath pod on the same node could read the
// plaintext in tmpfs.
const LabelPodSecurityEnforce = "pod-security.kubernetes.io/enforce"

// FieldManager is the server-side apply field manager of every ModelGuard
// write; the admission guard tells the operator's own changes by it.
const FieldManager = "modelguard"

// LabelComponent tells the pods of one workload apart by their role, e.g. a
// training job's trainer pods from its seal pod, so that a Service or a
// controller selects only its own.
const LabelComponent = "modelguard.dev/component"

// Component values of LabelComponent.
const (
	ComponentServer = "server"
)

// Container names in the pods ModelGuard generates.
const (
	ContainerUnseal = "unseal"
	ContainerServer = "server"
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

// Admission guard wire names, shared by internal/webhook, the chart and
// kustomize. Its namespace scope is LabelProtectedNamespace.
const (
	// AdmissionWebhookName is the guard's webhook name in the
	// ValidatingWebhookConfiguration (a qualified name, as the API server
	// requires).
	AdmissionWebhookName = "guard.modelguard.dev"
)
