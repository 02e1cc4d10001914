package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProtectedModelSpec is the desired state of a ProtectedModel.
type ProtectedModelSpec struct {
	// ownership records who owns the model. It is copied onto every object
	// ModelGuard creates for this model.
	// +required
	Ownership Ownership `json:"ownership"`

	// weights says where the sealed weights are, which model digest they
	// must have and which key opens them. An init container verifies and
	// decrypts them into memory; the model server never sees a key.
	// +required
	Weights SealedWeights `json:"weights"`

	// server is the model server that serves the decrypted weights.
	// +required
	Server ModelServer `json:"server"`

	// gpu asks for GPUs for each model server pod. Unset means no GPU.
	// +optional
	GPU *GPU `json:"gpu,omitempty"`

	// network says who may call the model and where it may connect. Unset
	// or empty means nobody may call it and it can reach only DNS.
	// +optional
	Network *Network `json:"network,omitempty"`

	// access controls exec into the model's pods. Unset means nobody may
	// exec.
	// +optional
	Access *Access `json:"access,omitempty"`

	// runtimeClassName is the RuntimeClass of the pods, e.g. a
	// confidential-computing runtime such as "kata-cc". Unset means the
	// cluster default.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="runtimeClassName must be a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. kata-cc"
	RuntimeClassName string `json:"runtimeClassName,omitempty"`
}

// ModelServer is the container that serves the model.
type ModelServer struct {
	// image is the model server's container image, e.g.
	// "registry.example.com/acme/serve:1.4".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^\S+$')`,message="server.image must be an image reference without spaces, e.g. registry.example.com/acme/serve:1.4"
	Image string `json:"image"`

	// command overrides the image's entrypoint.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Command []string `json:"command,omitempty"`

	// args are the arguments to the entrypoint.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Args []string `json:"args,omitempty"`

	// env are environment variables for the model server.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Env []corev1.EnvVar `json:"env,omitempty"`

	// port is the TCP port the server listens on, from 1 to 65535. The
	// Service and the NetworkPolicy use it. It defaults to 8080.
	// +optional
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`

	// replicas is the number of model server pods, from 0 to 1000. It
	// defaults to 1.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Replicas *int32 `json:"replicas,omitempty"`

	// resources are the CPU and memory requests and limits of the server.
	// The memory limit must leave room for weights.memory, which the
	// decrypted weights occupy; GPUs are asked for with spec.gpu.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// readinessPath is an HTTP path on port that answers 200 when the model
	// is loaded, e.g. "/healthz". Unset means ready once the port accepts
	// connections.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^/\S*$')`,message="server.readinessPath must be an absolute HTTP path without spaces, e.g. /healthz"
	ReadinessPath string `json:"readinessPath,omitempty"`

	// modelMountPath is where the decrypted weights appear, read-only, in
	// the server container. It defaults to "/models".
	// +optional
	// +kubebuilder:default="/models"
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^/[^:]*$')`,message="server.modelMountPath must be an absolute path without ':', e.g. /models"
	// +kubebuilder:validation:XValidation:rule="self != '/'",message="server.modelMountPath must not be the root directory"
	ModelMountPath string `json:"modelMountPath,omitempty"`
}

// ProtectedModelStatus is the observed protection state of a ProtectedModel.
type ProtectedModelStatus struct {
	// observedGeneration is the metadata.generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase summarizes the state: Pending, Protected, Degraded or Failed.
	// +optional
	Phase ProtectedModelPhase `json:"phase,omitempty"`

	// conditions report readiness (Ready, Reconciling, Stalled) and each
	// protection guarantee (WeightsEncrypted, WeightsVerified, KeyAvailable,
	// NetworkIsolated, Hardened, GPUScheduled, OwnershipRecorded).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// protection summarizes how the model is protected, for humans.
	// +optional
	Protection *ProtectionSummary `json:"protection,omitempty"`

	// replicas is the number of model server pods.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// readyReplicas is the number of model server pods that are ready.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
}

// ProtectedModel serves a model from sealed weights: the weights stay
// encrypted at rest and are decrypted only into memory, the pods are isolated
// by a default-deny NetworkPolicy, scheduled onto suitable GPUs, hardened, and
// every object carries the owner's ownership annotations.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=pm,categories=modelguard
// +kubebuilder:printcolumn:name="Owner",type=string,JSONPath=`.spec.ownership.owner`
// +kubebuilder:printcolumn:name="Class",type=string,JSONPath=`.spec.ownership.classification`
// +kubebuilder:printcolumn:name="Encrypted",type=string,JSONPath=`.status.conditions[?(@.type=="WeightsEncrypted")].status`
// +kubebuilder:printcolumn:name="Isolated",type=string,JSONPath=`.status.conditions[?(@.type=="NetworkIsolated")].status`
// +kubebuilder:printcolumn:name="GPUs",type=integer,JSONPath=`.spec.gpu.count`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 50",message="metadata.name must be at most 50 characters, because ModelGuard derives child object names from it"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter), because the Service reuses it"
type ProtectedModel struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata. The name must be a DNS-1035
	// label of at most 50 characters.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the model to serve and how to protect it.
	// +required
	Spec ProtectedModelSpec `json:"spec"`

	// status is the observed protection state.
	// +optional
	Status ProtectedModelStatus `json:"status,omitempty"`
}

// ProtectedModelList is a list of ProtectedModels.
//
// +kubebuilder:object:root=true
type ProtectedModelList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProtectedModel `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ProtectedModel{}, &ProtectedModelList{})
}
