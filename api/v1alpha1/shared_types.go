package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// This file holds the blocks that ProtectedModel and TrainingJob share, so
// that both kinds validate, default and document them identically and the
// controllers can turn them into pod settings with one set of functions.
//
// Conventions: fields whose zero value is meaningful (replicas: 0) are
// pointers; fields whose zero value is invalid and that have a default (port)
// are values with omitempty, so that a Go client that leaves them unset gets
// the schema default. Every list and string carries a bound, which keeps the
// estimated cost of the CEL rules within the API server's budget.

// Ownership records who owns the intellectual property in a model. ModelGuard
// copies it onto every object it manages as modelguard.dev/* annotations.
type Ownership struct {
	// owner is the legal owner of the model's weights, e.g. "Acme Corp".
	// It cannot be changed once set: transferring ownership means creating a
	// new object, so that the ownership record of running workloads cannot be
	// rewritten in place.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="ownership.owner is immutable: create a new object to record a different owner"
	Owner string `json:"owner"`

	// contact is an email address to ask about the model, e.g. "ml-legal@acme.example".
	// +optional
	// +kubebuilder:validation:MaxLength=254
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[^@\s]+@[^@\s]+\.[^@\s]+$')`,message="ownership.contact must be an email address, e.g. ml-legal@acme.example"
	Contact string `json:"contact,omitempty"`

	// license is the license of the weights: an SPDX license expression such
	// as "Apache-2.0" or "MIT OR Apache-2.0", or a custom identifier of the
	// form "LicenseRef-<id>", e.g. "LicenseRef-Acme-Proprietary".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^\(*(DocumentRef-[A-Za-z0-9.-]+:)?[A-Za-z0-9][A-Za-z0-9.-]*\+?\)*( (AND|OR|WITH) \(*(DocumentRef-[A-Za-z0-9.-]+:)?[A-Za-z0-9][A-Za-z0-9.-]*\+?\)*)*$')`,message="ownership.license must be an SPDX license expression such as Apache-2.0 or MIT OR Apache-2.0, or LicenseRef-<id> for a custom license"
	License string `json:"license"`

	// copyright is the copyright notice, e.g. "Copyright 2026 Acme Corp".
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Copyright string `json:"copyright,omitempty"`

	// classification is how sensitive the weights are: Public, Internal,
	// Confidential or TradeSecret. It defaults to TradeSecret, the strictest,
	// so that forgetting it never lowers protection.
	// +optional
	// +kubebuilder:default=TradeSecret
	Classification Classification `json:"classification,omitempty"`

	// patents lists patents or patent applications that cover the model,
	// e.g. "US 11,123,456 B2". At most 32.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	Patents []string `json:"patents,omitempty"`
}

// Classification is how sensitive a model's weights are.
// +kubebuilder:validation:Enum=Public;Internal;Confidential;TradeSecret
type Classification string

const (
	// ClassificationPublic marks weights that may be published.
	ClassificationPublic Classification = "Public"
	// ClassificationInternal marks weights for use inside the company.
	ClassificationInternal Classification = "Internal"
	// ClassificationConfidential marks weights shared on a need-to-know basis.
	ClassificationConfidential Classification = "Confidential"
	// ClassificationTradeSecret marks weights whose secrecy is their value.
	ClassificationTradeSecret Classification = "TradeSecret"
)

// GPU asks for GPUs and says which ones fit. For a TrainingJob it applies to
// every node of the job.
// +kubebuilder:validation:XValidation:rule="!has(self.products) || self.count > 0",message="gpu.products needs gpu.count greater than 0",fieldPath=".count"
// +kubebuilder:validation:XValidation:rule="!has(self.minMemoryMiB) || self.count > 0",message="gpu.minMemoryMiB needs gpu.count greater than 0",fieldPath=".count"
type GPU struct {
	// count is the number of GPUs per pod, from 0 to 64. It becomes the
	// pod's limit on resourceName.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=64
	Count int32 `json:"count"`

	// resourceName is the extended resource that counts GPUs, e.g.
	// "nvidia.com/gpu", "nvidia.com/mig-1g.10gb" or "amd.com/gpu". It must be
	// a domain-qualified name outside kubernetes.io.
	// +optional
	// +kubebuilder:default="nvidia.com/gpu"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$')`,message="gpu.resourceName must be an extended resource name <domain>/<name>, e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb or amd.com/gpu"
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('kubernetes.io/') && !self.contains('.kubernetes.io/') && !self.startsWith('requests.')",message="gpu.resourceName must be an extended resource name, outside the kubernetes.io domain"
	ResourceName string `json:"resourceName,omitempty"`

	// products restricts scheduling to nodes whose nvidia.com/gpu.product
	// label is one of these values, e.g. "NVIDIA-A100-SXM4-80GB". It becomes a
	// required node affinity. Setting it needs count > 0.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:XValidation:rule=`self.matches(r'^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')`,message="gpu.products entries must be node label values (letters, digits, '-', '_' and '.'), e.g. NVIDIA-A100-SXM4-80GB"
	Products []string `json:"products,omitempty"`

	// minMemoryMiB restricts scheduling to nodes whose nvidia.com/gpu.memory
	// label (MiB per GPU) is at least this value. It becomes a required node
	// affinity. Setting it needs count > 0.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4194304
	MinMemoryMiB int64 `json:"minMemoryMiB,omitempty"`

	// tolerations are added to the pods next to the toleration for the
	// resourceName taint that ModelGuard adds by default.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// priorityClassName is the PriorityClass of the pods, e.g. to let
	// inference preempt batch work on shared GPUs.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="gpu.priorityClassName must be a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. high-priority"
	PriorityClassName string `json:"priorityClassName,omitempty"`
}

// Network says who may talk to the workload and where it may connect.
// ModelGuard turns it into a NetworkPolicy that denies everything else: with
// both lists empty, the pods accept no connections and can reach only DNS.
type Network struct {
	// allowedClients are the pods that may connect to the model's port. A
	// client matches an entry when it matches both of its selectors.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	AllowedClients []NetworkClient `json:"allowedClients,omitempty"`

	// allowedEgress are the address ranges the pods may connect to, beyond
	// DNS. For a model whose weights come over https, the bundle's host must
	// be covered here.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	AllowedEgress []EgressRule `json:"allowedEgress,omitempty"`
}

// NetworkClient selects pods allowed to connect, as a NetworkPolicy peer does.
// +kubebuilder:validation:XValidation:rule="has(self.namespaceSelector) || has(self.podSelector)",message="network.allowedClients entry must set namespaceSelector, podSelector or both"
type NetworkClient struct {
	// namespaceSelector selects the namespaces of allowed clients. Unset
	// means the workload's own namespace; {} means every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// podSelector selects allowed client pods within those namespaces. Unset
	// means every pod in them.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
}

// EgressRule allows connections to an address range.
// +kubebuilder:validation:XValidation:rule="!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e) || cidr(self.cidr).containsCIDR(e))",message="network.allowedEgress except ranges must lie inside cidr",fieldPath=".except"
type EgressRule struct {
	// cidr is the allowed range, e.g. "10.20.0.0/16" or "2001:db8::/32".
	// +required
	CIDR CIDR `json:"cidr"`

	// except are ranges inside cidr that stay denied.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Except []CIDR `json:"except,omitempty"`

	// ports limits the rule to these ports. Empty means every port.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Ports []NetworkPort `json:"ports,omitempty"`
}

// CIDR is an IPv4 or IPv6 address range in CIDR notation.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=43
// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be an IP range in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/32"
type CIDR string

// NetworkPort is a port or a port range.
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || self.endPort >= self.port",message="network.allowedEgress ports endPort must not be less than port",fieldPath=".endPort"
type NetworkPort struct {
	// protocol is TCP, UDP or SCTP. It defaults to TCP.
	// +optional
	// +kubebuilder:default=TCP
	// +kubebuilder:validation:Enum=TCP;UDP;SCTP
	Protocol corev1.Protocol `json:"protocol,omitempty"`

	// port is the port number, from 1 to 65535.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`

	// endPort, when set, makes the rule cover port through endPort.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort *int32 `json:"endPort,omitempty"`
}

// Access controls interactive access to the protected pods.
type Access struct {
	// breakGlassGroups are the groups allowed to exec into or attach to the
	// protected pods, for emergencies. Every such access is audited. Empty
	// means nobody may exec.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	BreakGlassGroups []string `json:"breakGlassGroups,omitempty"`
}

// SealedWeights says where a sealed weight bundle lives, which model it must
// contain and how to get the key that opens it.
type SealedWeights struct {
	// source is where the sealed bundle is read from: exactly one of volume
	// or http. The bundle is ciphertext, so it may live anywhere.
	// +required
	Source WeightsSource `json:"source"`

	// digest is the model digest recorded in the sealed bundle's manifest,
	// "sha256:" followed by 64 lowercase hex digits, as printed by
	// `modelguard seal`. The weights are verified against it before serving,
	// so a swapped or tampered bundle never reaches the model server.
	// +required
	// +kubebuilder:validation:MaxLength=71
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^sha256:[a-f0-9]{64}$')`,message="weights.digest must be sha256: followed by 64 lowercase hex digits, as printed by modelguard seal"
	Digest string `json:"digest"`

	// key names the ModelKey whose key-encryption key wrapped the bundle's
	// data key. The KEK never leaves the operator or the KMS, and the data
	// key is never stored in the cluster: the operator releases it only to
	// the verified unseal container of this model's own pods.
	// +required
	Key ModelKeyReference `json:"key"`

	// memory is the size of the memory-backed volume that holds the
	// decrypted weights, e.g. "16Gi". Plaintext never touches disk, so it must
	// fit the unpacked model; it counts against the pod's memory limit.
	// Greater than 0 and at most 4Ti.
	// +required
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="weights.memory must be greater than 0, e.g. 16Gi"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).compareTo(quantity('4Ti')) <= 0",message="weights.memory must be at most 4Ti"
	Memory resource.Quantity `json:"memory"`
}

// WeightsSource is where a sealed bundle is read from. Set exactly one field.
// +kubebuilder:validation:XValidation:rule="has(self.volume) != has(self.http)",message="weights.source must set exactly one of volume or http"
type WeightsSource struct {
	// volume reads the bundle from a PersistentVolumeClaim in the same
	// namespace, mounted read-only.
	// +optional
	Volume *VolumeSource `json:"volume,omitempty"`

	// http downloads the bundle from an https URL.
	// +optional
	HTTP *HTTPSource `json:"http,omitempty"`
}

// VolumeSource is a sealed bundle on a PersistentVolumeClaim.
type VolumeSource struct {
	// claimName is the PersistentVolumeClaim that holds the bundle, in the
	// same namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="volume.claimName must be a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. sealed-models"
	ClaimName string `json:"claimName"`

	// path is the bundle's directory inside the claim, relative to its root,
	// e.g. "models/sentiment/v3". Empty means the root.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') && self != '..' && !self.startsWith('../') && !self.contains('/../') && !self.endsWith('/..')",message="volume.path must be relative to the claim's root and must not contain '..'"
	Path string `json:"path,omitempty"`
}

// HTTPSource is a sealed bundle served over https.
type HTTPSource struct {
	// url is the https URL of the bundle, e.g.
	// "https://models.example.com/sentiment/v3/". Plain http is refused,
	// and so are credentials in the URL, which would be stored in clear.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != ''",message="url must be an https URL with a host, e.g. https://models.example.com/bundle/"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[^/]*//[^/]*@')",message="url must not contain credentials (user:password@)"
	URL string `json:"url"`
}

// ModelKeyReference names a cluster-scoped ModelKey. Its
// spec.namespaceSelector must select the namespace of the object that refers
// to it (reason KeyNotPermitted otherwise).
type ModelKeyReference struct {
	// modelKey is the name of the ModelKey, e.g. "models-prod".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="key.modelKey must be a ModelKey name: a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. models-prod"
	ModelKey string `json:"modelKey"`
}

// ProtectionSummary tells a person, at a glance, how a workload is protected.
// The conditions carry the machine-readable truth; this is for humans.
type ProtectionSummary struct {
	// cipher is how the weights are encrypted at rest, e.g.
	// "AES-256-GCM, 1 MiB chunks".
	// +optional
	Cipher string `json:"cipher,omitempty"`

	// keyProvider is where the key-encryption key lives: Secret, AWSKMS or
	// VaultTransit.
	// +optional
	KeyProvider string `json:"keyProvider,omitempty"`

	// digest is the verified model digest.
	// +optional
	Digest string `json:"digest,omitempty"`

	// isolation describes the network isolation in force, e.g.
	// "default-deny; 1 client rule; egress DNS only".
	// +optional
	Isolation string `json:"isolation,omitempty"`

	// execGuard describes who may exec into the pods, e.g.
	// "break-glass: sre-oncall (audited)" or "nobody".
	// +optional
	ExecGuard string `json:"execGuard,omitempty"`
}
