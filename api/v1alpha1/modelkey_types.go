package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A ModelKey is cluster-scoped so that the key-encryption key it names lives
// where no tenant can read it: a Secret in the operator's own namespace, or a
// KMS. Models refer to it by name; namespaceSelector says whose models may.

// ModelKeySpec is the desired state of a ModelKey.
type ModelKeySpec struct {
	// provider is where the key-encryption key (KEK) lives: exactly one of
	// secret, awsKms or vaultTransit. The KEK never leaves the operator or
	// the KMS; pods only ever receive a bundle's data key, sealed to them.
	// +required
	Provider ModelKeyProvider `json:"provider"`

	// namespaceSelector selects the namespaces whose ProtectedModels and
	// TrainingJobs may use this key, as a Kueue ClusterQueue or a
	// cert-manager ClusterIssuer does. It is required so that sharing a key
	// is always a decision: {} selects every namespace. A model in a
	// namespace it does not select is not served (reason KeyNotPermitted).
	// +required
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector"`
}

// ModelKeyProvider is where a ModelKey's KEK lives. Set exactly one field.
// +kubebuilder:validation:XValidation:rule="(has(self.secret) ? 1 : 0) + (has(self.awsKms) ? 1 : 0) + (has(self.vaultTransit) ? 1 : 0) == 1",message="provider must set exactly one of secret, awsKms or vaultTransit"
type ModelKeyProvider struct {
	// secret reads a raw 256-bit KEK from a Secret in the operator's own
	// namespace. The namespace is never part of the spec: it is the one the
	// operator runs in (from the downward API), which tenants cannot read.
	// +optional
	Secret *ModelKeySecret `json:"secret,omitempty"`

	// awsKms wraps and unwraps data keys with an AWS KMS key. The operator
	// authenticates with its own AWS identity (e.g. IRSA or EKS Pod
	// Identity); no credentials are stored in the spec.
	// +optional
	AWSKMS *AWSKMSKey `json:"awsKms,omitempty"`

	// vaultTransit wraps and unwraps data keys with a HashiCorp Vault
	// transit key. The operator logs in with Vault's Kubernetes auth method.
	// +optional
	VaultTransit *ModelKeyVaultTransit `json:"vaultTransit,omitempty"`
}

// ModelKeySecret names the entry of a Secret in the operator's namespace that
// holds a raw KEK: 32 bytes, 64 hex characters or base64 of 32 bytes, the
// forms `modelguard seal --kek-file` accepts.
type ModelKeySecret struct {
	// name is the Secret's name, in the operator's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="secret.name must be a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. model-kek"
	Name string `json:"name"`

	// key is the entry of the Secret's data that holds the KEK, e.g. "kek".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[-._a-zA-Z0-9]+$')`,message="secret.key must be a Secret data key (letters, digits, '-', '_' and '.'), e.g. kek"
	Key string `json:"key"`
}

// ModelKeyVaultTransit is a key of a HashiCorp Vault transit secrets engine,
// used with Vault's Kubernetes auth method.
type ModelKeyVaultTransit struct {
	// address is Vault's https address, e.g. "https://vault.example.com:8200".
	// It must be https, since data keys travel over it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != ''",message="vaultTransit.address must be an https URL with a host, e.g. https://vault.example.com:8200"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[^/]*//[^/]*@')",message="vaultTransit.address must not contain credentials (user:password@)"
	Address string `json:"address"`

	// mount is the path where the transit engine is mounted, without a
	// leading '/'. It defaults to "transit".
	// +optional
	// +kubebuilder:default=transit
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9][-A-Za-z0-9_.]*)*$')`,message="vaultTransit.mount must be a Vault mount path without a leading or trailing '/', e.g. transit"
	Mount string `json:"mount,omitempty"`

	// keyName is the name of the transit key, e.g. "models".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[A-Za-z0-9][-A-Za-z0-9_.]*$')`,message="vaultTransit.keyName must start with a letter or digit and contain only letters, digits, '-', '_' and '.'"
	KeyName string `json:"keyName"`

	// role is the Vault Kubernetes-auth role the operator logs in as, with
	// its own ServiceAccount token. The role must grant encrypt and decrypt
	// on the transit key, and nothing a tenant could use.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[A-Za-z0-9][-A-Za-z0-9_.@]*$')`,message="vaultTransit.role must start with a letter or digit and contain only letters, digits, '-', '_', '.' and '@'"
	Role string `json:"role"`

	// authMount is the path where the Kubernetes auth method is mounted,
	// without a leading '/'. It defaults to "kubernetes".
	// +optional
	// +kubebuilder:default=kubernetes
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9][-A-Za-z0-9_.]*)*$')`,message="vaultTransit.authMount must be a Vault mount path without a leading or trailing '/', e.g. kubernetes"
	AuthMount string `json:"authMount,omitempty"`

	// namespace is the Vault Enterprise namespace of the mounts, e.g.
	// "ml/prod". Unset means the root namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9][-A-Za-z0-9_.]*)*$')`,message="vaultTransit.namespace must be a Vault namespace path without a leading or trailing '/', e.g. ml/prod"
	Namespace string `json:"namespace,omitempty"`

	// caBundle is the PEM-encoded CA certificates that Vault's serving
	// certificate must chain to. Unset means the operator's system roots.
	// It is not secret: it holds certificates only.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	// +kubebuilder:validation:XValidation:rule="self.contains('-----BEGIN CERTIFICATE-----')",message="vaultTransit.caBundle must hold PEM-encoded certificates (-----BEGIN CERTIFICATE-----)"
	// +kubebuilder:validation:XValidation:rule="!self.contains('PRIVATE KEY')",message="vaultTransit.caBundle must hold certificates only, never a private key"
	CABundle string `json:"caBundle,omitempty"`
}

// ModelKeyProviderKind names a ModelKey's provider in status and printer
// columns. The values match ProtectionSummary.keyProvider.
// +kubebuilder:validation:Enum=Secret;AWSKMS;VaultTransit
type ModelKeyProviderKind string

const (
	// ModelKeyProviderSecret is a raw KEK in a Secret of the operator's
	// namespace.
	ModelKeyProviderSecret ModelKeyProviderKind = "Secret"
	// ModelKeyProviderAWSKMS is an AWS KMS key.
	ModelKeyProviderAWSKMS ModelKeyProviderKind = "AWSKMS"
	// ModelKeyProviderVaultTransit is a Vault transit key.
	ModelKeyProviderVaultTransit ModelKeyProviderKind = "VaultTransit"
)

// Kind returns which provider is set, or "" when none is (the API server
// rejects that, so only an unvalidated object has it).
func (p ModelKeyProvider) Kind() ModelKeyProviderKind {
	switch {
	case p.Secret != nil:
		return ModelKeyProviderSecret
	case p.AWSKMS != nil:
		return ModelKeyProviderAWSKMS
	case p.VaultTransit != nil:
		return ModelKeyProviderVaultTransit
	}
	return ""
}

// ModelKeyStatus is the observed state of a ModelKey.
type ModelKeyStatus struct {
	// conditions report whether the key works. Ready is True when a
	// wrap-then-unwrap self-test against the provider succeeded for the
	// generation in its observedGeneration.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// provider is the kind of provider in use: Secret, AWSKMS or
	// VaultTransit.
	// +optional
	Provider ModelKeyProviderKind `json:"provider,omitempty"`

	// keyId identifies the KEK without revealing it, as sealed bundles
	// record it: "kek:" and a 16-hex-digit fingerprint for a Secret, the key
	// ARN for AWS KMS, the transit key's name for Vault. A bundle opens with
	// this ModelKey only if its manifest names the same key ID.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	KeyID string `json:"keyId,omitempty"`
}

// ModelKey names a key-encryption key that seals and opens model bundles,
// and says which namespaces' models may use it. It is cluster-scoped and
// managed by the platform team; tenants refer to it by name only.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=mk,categories=modelguard
// +kubebuilder:printcolumn:name="Provider",type=string,JSONPath=`.status.provider`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Key",type=string,JSONPath=`.status.keyId`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ModelKey struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata. ModelKeys are
	// cluster-scoped, so they have no namespace.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says where the KEK lives and who may use it.
	// +required
	Spec ModelKeySpec `json:"spec"`

	// status reports whether the key works.
	// +optional
	Status ModelKeyStatus `json:"status,omitempty"`
}

// ModelKeyList is a list of ModelKeys.
//
// +kubebuilder:object:root=true
type ModelKeyList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModelKey `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ModelKey{}, &ModelKeyList{})
}

// ModelKey condition reasons, and the reasons of key-release decisions that
// the operator records as Events on the model and counts in
// modelguard_key_releases_total. ReasonKeyProviderUnavailable,
// ReasonKeySecretNotFound, ReasonKeyNotInSecret, ReasonKeyUnwrapFailed and
// ReasonDigestMismatch in conditions.go apply to ModelKeys too.
const (
	// ReasonSelfTestPassed means a fresh data key was wrapped and unwrapped
	// with the provider, so the ModelKey is Ready.
	ReasonSelfTestPassed = "SelfTestPassed"
	// ReasonSelfTestFailed means the provider answered, but the
	// wrap-then-unwrap self-test did not give the data key back.
	ReasonSelfTestFailed = "SelfTestFailed"
	// ReasonKeyNotPermitted means the ModelKey's namespaceSelector does not
	// select the model's namespace.
	ReasonKeyNotPermitted = "KeyNotPermitted"
	// ReasonModelKeyNotFound means the model names a ModelKey that does not
	// exist.
	ReasonModelKeyNotFound = "ModelKeyNotFound"
	// ReasonModelKeyNotReady means the ModelKey exists but is not Ready.
	ReasonModelKeyNotReady = "ModelKeyNotReady"

	// ReasonKeyReleased means a verified pod received the data key.
	ReasonKeyReleased = "KeyReleased"
	// ReasonKeyWrapped means a verified sealing pod had a data key wrapped.
	ReasonKeyWrapped = "KeyWrapped"
	// ReasonTokenRejected means the pod's token failed TokenReview, is for
	// another audience, has expired, or is not bound to a pod.
	ReasonTokenRejected = "TokenRejected"
	// ReasonPodNotFound means the pod the token names does not exist or has
	// another UID.
	ReasonPodNotFound = "PodNotFound"
	// ReasonOwnerChainBroken means the pod is not owned, by UID, through a
	// ReplicaSet or Job by the workload ModelGuard manages for the model.
	ReasonOwnerChainBroken = "OwnerChainBroken"
	// ReasonPodSpecMismatch means the pod's spec differs from the one the
	// builders generate for the model.
	ReasonPodSpecMismatch = "PodSpecMismatch"
	// ReasonEphemeralContainers means the pod has ephemeral containers.
	ReasonEphemeralContainers = "EphemeralContainers"
	// ReasonUnsealNotRunning means the unseal init container is not the one
	// running, or the server container has already started.
	ReasonUnsealNotRunning = "UnsealNotRunning"
	// ReasonAlreadyReleased means this pod was given the key before.
	ReasonAlreadyReleased = "AlreadyReleased"
	// ReasonModelStalled means the model is Stalled, so nothing is released.
	ReasonModelStalled = "ModelStalled"
	// ReasonBadRequest means the request was malformed or too large.
	ReasonBadRequest = "BadRequest"
	// ReasonVerifierUnavailable means the checks could not be made, e.g. the
	// API server did not answer the TokenReview; the pod retries.
	ReasonVerifierUnavailable = "VerifierUnavailable"
)

// AWSKMSKey is a key in AWS Key Management Service.
type AWSKMSKey struct {
	// keyId identifies the KMS key: a key ID, key ARN, alias name
	// ("alias/models") or alias ARN.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	KeyID string `json:"keyId"`

	// region is the AWS region, e.g. "eu-west-1". Unset means the region in
	// the key ARN, or the operator's default region.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z]{2}(-[a-z]+)+-[0-9]+$')`,message="awsKms.region must be an AWS region, e.g. eu-west-1"
	Region string `json:"region,omitempty"`

	// endpoint overrides the KMS endpoint, e.g. for a VPC endpoint. It must
	// be https, since the unwrapped data key travels back over it.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != ''",message="awsKms.endpoint must be an https URL, e.g. https://kms.eu-west-1.amazonaws.com"
	Endpoint string `json:"endpoint,omitempty"`
}
