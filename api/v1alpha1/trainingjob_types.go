package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrainingJobSpec is the desired state of a TrainingJob.
type TrainingJobSpec struct {
	// ownership records who owns the model being trained and the weights it
	// produces. It is copied onto every object ModelGuard creates for the job
	// and into the sealed output's manifest.
	// +required
	Ownership Ownership `json:"ownership"`

	// image is the training container image, e.g.
	// "registry.example.com/acme/trainer:2.1".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^\S+$')`,message="image must be an image reference without spaces, e.g. registry.example.com/acme/trainer:2.1"
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

	// env are environment variables for the training container.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Env []corev1.EnvVar `json:"env,omitempty"`

	// nodes is the number of pods that train together, from 1 to 512. They
	// are admitted as a gang: all start or none. It defaults to 1.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=512
	Nodes int32 `json:"nodes,omitempty"`

	// gpu asks for GPUs for each of the job's pods. Unset means no GPU.
	// +optional
	GPU *GPU `json:"gpu,omitempty"`

	// resources are the CPU and memory requests and limits of each pod.
	// GPUs are asked for with spec.gpu.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// baseWeights are sealed weights to fine-tune from. They are verified and
	// decrypted into memory, exactly as for a ProtectedModel. Unset means
	// training from scratch.
	// +optional
	BaseWeights *SealedWeights `json:"baseWeights,omitempty"`

	// data are the training data sets, each mounted at /data/<name>.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Data []TrainingData `json:"data,omitempty"`

	// output is where checkpoints and final weights are written, and how the
	// final weights are sealed.
	// +required
	Output TrainingOutput `json:"output"`

	// queueName is the Kueue LocalQueue that admits the job. Unset means the
	// job starts without queueing.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="queueName must be a LocalQueue name: a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.') of at most 63 characters"
	QueueName string `json:"queueName,omitempty"`

	// backoffLimit is how many times a failed job is retried, from 0 to 100.
	// It defaults to 0, because a retry repeats GPU hours.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	BackoffLimit *int32 `json:"backoffLimit,omitempty"`

	// activeDeadlineSeconds bounds the job's running time, in seconds. The
	// job fails when it runs longer. Unset means no limit.
	// +optional
	// +kubebuilder:validation:Minimum=1
	ActiveDeadlineSeconds *int64 `json:"activeDeadlineSeconds,omitempty"`

	// network says who may connect to the job's pods and where they may
	// connect. The job's own pods may always talk to each other. Unset or
	// empty means no other ingress and egress only to DNS.
	// +optional
	Network *Network `json:"network,omitempty"`

	// access controls exec into the job's pods. Unset means nobody may exec.
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

// TrainingData is a data set for training: a PersistentVolumeClaim or an
// https URL. Set exactly one of claimName or http.
// +kubebuilder:validation:XValidation:rule="has(self.claimName) != has(self.http)",message="data entry must set exactly one of claimName or http"
// +kubebuilder:validation:XValidation:rule="!has(self.readOnly) || !self.readOnly || has(self.claimName)",message="data readOnly applies only to claimName",fieldPath=".readOnly"
type TrainingData struct {
	// name identifies the data set; it is mounted at /data/<name>. A
	// lowercase DNS label.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')`,message="data name must be a lowercase DNS label (lowercase letters, digits and '-'), e.g. reviews"
	Name string `json:"name"`

	// claimName is a PersistentVolumeClaim in the same namespace that holds
	// the data.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="data claimName must be a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. review-corpus"
	ClaimName string `json:"claimName,omitempty"`

	// readOnly mounts the claim read-only.
	// +optional
	ReadOnly bool `json:"readOnly,omitempty"`

	// http downloads the data from an https URL.
	// +optional
	HTTP *HTTPSource `json:"http,omitempty"`
}

// TrainingOutput is the volume for checkpoints and final weights, and how the
// final weights are sealed.
type TrainingOutput struct {
	// storageClassName is the StorageClass of the output
	// PersistentVolumeClaim. Unset means the cluster default. Unless
	// allowUnencryptedStorage is true, the class must encrypt at rest, since
	// checkpoints are plaintext while training runs.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')`,message="output.storageClassName must be a lowercase RFC 1123 subdomain (lowercase letters, digits, '-' and '.'), e.g. encrypted-ssd"
	StorageClassName string `json:"storageClassName,omitempty"`

	// size is the capacity of the output PersistentVolumeClaim, e.g. "200Gi".
	// +required
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="output.size must be greater than 0, e.g. 200Gi"
	Size resource.Quantity `json:"size"`

	// allowUnencryptedStorage accepts a StorageClass that does not encrypt
	// at rest for the plaintext checkpoints. It defaults to false.
	// +optional
	// +kubebuilder:default=false
	AllowUnencryptedStorage bool `json:"allowUnencryptedStorage,omitempty"`

	// seal is how the final weights are sealed when training succeeds.
	// +required
	Seal SealSpec `json:"seal"`

	// promoteTo is the name of a ProtectedModel to create in the same
	// namespace from the sealed output when the job succeeds. Unset means
	// no model is created.
	// +optional
	// +kubebuilder:validation:MaxLength=50
	// +kubebuilder:validation:XValidation:rule=`self.matches(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')`,message="output.promoteTo must be a ProtectedModel name: a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)"
	PromoteTo string `json:"promoteTo,omitempty"`
}

// SealSpec says how to seal weights.
type SealSpec struct {
	// key names the ModelKey that wraps the sealed output's data key. The
	// sealing pod sends a fresh data key to the operator's key-release
	// service and gets it back wrapped; the KEK never reaches the pod.
	// +required
	Key ModelKeyReference `json:"key"`
}

// TrainingJobStatus is the observed state of a TrainingJob.
type TrainingJobStatus struct {
	// observedGeneration is the metadata.generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase summarizes the state: Pending, Admitted, Running, Sealing,
	// Succeeded or Failed.
	// +optional
	Phase TrainingJobPhase `json:"phase,omitempty"`

	// conditions report readiness (Ready, Reconciling, Stalled), progress
	// and each protection guarantee, including OutputSealed.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// protection summarizes how the job is protected, for humans.
	// +optional
	Protection *ProtectionSummary `json:"protection,omitempty"`

	// output is where the sealed result is, once the job has succeeded.
	// +optional
	Output *TrainingOutputStatus `json:"output,omitempty"`
}

// TrainingOutputStatus is where a TrainingJob's sealed output is.
type TrainingOutputStatus struct {
	// claimName is the PersistentVolumeClaim that holds the output.
	// +optional
	ClaimName string `json:"claimName,omitempty"`

	// path is the sealed bundle's directory inside the claim.
	// +optional
	Path string `json:"path,omitempty"`

	// sealedDigest is the model digest of the sealed output, to use as a
	// ProtectedModel's spec.weights.digest.
	// +optional
	SealedDigest string `json:"sealedDigest,omitempty"`
}

// TrainingJob trains a model on one or more GPU nodes, admitted as a gang,
// with the same isolation and ownership as a ProtectedModel, and seals the
// weights it produces.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tj,categories=modelguard
// +kubebuilder:printcolumn:name="Owner",type=string,JSONPath=`.spec.ownership.owner`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.spec.nodes`
// +kubebuilder:printcolumn:name="GPUs",type=integer,JSONPath=`.spec.gpu.count`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Sealed",type=string,JSONPath=`.status.conditions[?(@.type=="OutputSealed")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 50",message="metadata.name must be at most 50 characters, because ModelGuard derives child object names from it"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter), because child objects reuse it"
type TrainingJob struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata. The name must be a DNS-1035
	// label of at most 50 characters.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the training to run and how to protect it.
	// +required
	Spec TrainingJobSpec `json:"spec"`

	// status is the observed state.
	// +optional
	Status TrainingJobStatus `json:"status,omitempty"`
}

// TrainingJobList is a list of TrainingJobs.
//
// +kubebuilder:object:root=true
type TrainingJobList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrainingJob `json:"items"`
}

func init() {
	SchemeBuilder.Register(&TrainingJob{}, &TrainingJobList{})
}
