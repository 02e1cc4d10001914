package policy_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/modelguard/modelguard/internal/policy"
)

var (
	ids = policy.Identities{
		OperatorServiceAccount: "system:serviceaccount:modelguard-system:modelguard",
		TrustedControllers:     []string{"system:serviceaccount:kueue-system:kueue-controller-manager"},
	}
	sentiment = policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "sentiment", BreakGlassGroups: []string{"sre-oncall"}}
	locked    = policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "locked"}
	finetune  = policy.Workload{Kind: "TrainingJob", Namespace: "nlp", Name: "finetune", BreakGlassGroups: []string{"ml-oncall"}}
	modelPod  = policy.ObjectRef{Kind: "Pod", Namespace: "nlp", Name: "sentiment-7c9-x"}
)

func TestClassifyRequester(t *testing.T) {
	tests := []struct {
		name string
		user authenticationv1.UserInfo
		want policy.Requester
	}{
		{"a user bound to edit", authenticationv1.UserInfo{Username: "alice", Groups: []string{"dev", "system:authenticated"}}, policy.Tenant},
		{"a break-glass member is a tenant too", authenticationv1.UserInfo{Username: "carol", Groups: []string{"sre-oncall"}}, policy.Tenant},
		{"a ServiceAccount of the namespace", authenticationv1.UserInfo{Username: "system:serviceaccount:nlp:ci", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:nlp"}}, policy.Tenant},
		{"the operator", authenticationv1.UserInfo{Username: ids.OperatorServiceAccount}, policy.Operator},
		{"another namespace's modelguard account", authenticationv1.UserInfo{Username: "system:serviceaccount:nlp:modelguard"}, policy.Tenant},
		{"the ReplicaSet controller", authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:replicaset-controller"}, policy.SystemController},
		{"the garbage collector", authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:generic-garbage-collector"}, policy.SystemController},
		{"kube-controller-manager under its own name", authenticationv1.UserInfo{Username: "system:kube-controller-manager"}, policy.SystemController},
		{"the scheduler", authenticationv1.UserInfo{Username: "system:kube-scheduler"}, policy.SystemController},
		{"the HPA may not scale a model", authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}, policy.Tenant},
		{"a look-alike controller account in the tenant's namespace", authenticationv1.UserInfo{Username: "system:serviceaccount:nlp:replicaset-controller"}, policy.Tenant},
		{"a node", authenticationv1.UserInfo{Username: "system:node:gpu-1", Groups: []string{"system:nodes", "system:authenticated"}}, policy.Node},
		{"a node name without the nodes group", authenticationv1.UserInfo{Username: "system:node:gpu-1"}, policy.Tenant},
		{"Kueue, trusted", authenticationv1.UserInfo{Username: "system:serviceaccount:kueue-system:kueue-controller-manager"}, policy.TrustedController},
		{"a cluster administrator", authenticationv1.UserInfo{Username: "kubernetes-admin", Groups: []string{"system:masters"}}, policy.ClusterAdmin},
		{"nobody", authenticationv1.UserInfo{}, policy.Tenant},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := policy.ClassifyRequester(tt.user, ids); got != tt.want {
				t.Errorf("ClassifyRequester(%+v) = %v, want %v", tt.user, got, tt.want)
			}
			if got, want := policy.IsTenant(tt.user, ids), tt.want == policy.Tenant; got != want {
				t.Errorf("IsTenant = %v, want %v", got, want)
			}
		})
	}
	if got := policy.ClassifyRequester(authenticationv1.UserInfo{}, policy.Identities{}); got != policy.Tenant {
		t.Errorf("an empty user with no operator configured = %v, want a tenant", got)
	}
}

func TestBreakGlassGroup(t *testing.T) {
	tests := []struct {
		name            string
		groups, allowed []string
		wantGroup       string
		wantOK          bool
	}{
		{"member", []string{"system:authenticated", "sre-oncall"}, []string{"sre-oncall"}, "sre-oncall", true},
		{"first matching group", []string{"b", "a"}, []string{"a", "b"}, "b", true},
		{"not a member", []string{"dev"}, []string{"sre-oncall"}, "", false},
		{"nobody may", []string{"sre-oncall"}, nil, "", false},
		{"no groups", nil, []string{"sre-oncall"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, ok := policy.BreakGlassGroup(tt.groups, tt.allowed)
			if g != tt.wantGroup || ok != tt.wantOK {
				t.Errorf("BreakGlassGroup = %q, %v; want %q, %v", g, ok, tt.wantGroup, tt.wantOK)
			}
		})
	}
}

func TestWorkloadFromLabels(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   policy.Workload
	}{
		{"model", map[string]string{"modelguard.dev/model": "sentiment"}, policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "sentiment"}},
		{"training job", map[string]string{"modelguard.dev/training-job": "finetune"}, policy.Workload{Kind: "TrainingJob", Namespace: "nlp", Name: "finetune"}},
		{"managed-by only", map[string]string{"app.kubernetes.io/managed-by": "modelguard"}, policy.Workload{Namespace: "nlp"}},
		{"none", nil, policy.Workload{Namespace: "nlp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.WorkloadFromLabels("nlp", tt.labels)); diff != "" {
				t.Errorf("WorkloadFromLabels (-want +got):\n%s", diff)
			}
		})
	}
	if got, want := (policy.Workload{Namespace: "nlp"}).String(), "a ModelGuard-protected workload in namespace nlp"; got != want {
		t.Errorf("an unnamed workload is %q, want %q", got, want)
	}
}

func TestConnect(t *testing.T) {
	tenant := []string{"dev", "system:authenticated"}
	oncall := []string{"sre-oncall", "system:authenticated"}
	service := policy.ObjectRef{Kind: "Service", Namespace: "nlp", Name: "sentiment"}
	tests := []struct {
		name        string
		r           policy.Requester
		groups      []string
		target      policy.ObjectRef
		subresource string
		w           policy.Workload
		want        policy.Decision
	}{{
		name: "tenant exec", groups: tenant, target: modelPod, subresource: "exec", w: sentiment,
		want: policy.Decision{Rule: policy.RuleExec, Workload: sentiment,
			Message: "exec into pods of ProtectedModel nlp/sentiment is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may exec"},
	}, {
		name: "tenant exec, no break-glass groups", groups: tenant, target: modelPod, subresource: "exec", w: locked,
		want: policy.Decision{Rule: policy.RuleExec, Workload: locked,
			Message: "exec into pods of ProtectedModel nlp/locked is denied: it serves trade-secret weights; its spec.access.breakGlassGroups is empty, so nobody may exec; the platform team can name an on-call group there"},
	}, {
		name: "tenant exec into a training job's pod", groups: tenant, target: modelPod, subresource: "exec", w: finetune,
		want: policy.Decision{Rule: policy.RuleExec, Workload: finetune,
			Message: "exec into pods of TrainingJob nlp/finetune is denied: it holds trade-secret weights; members of spec.access.breakGlassGroups [ml-oncall] may exec"},
	}, {
		name: "tenant attach", groups: tenant, target: modelPod, subresource: "attach", w: sentiment,
		want: policy.Decision{Rule: policy.RuleAttach, Workload: sentiment,
			Message: "attaching to pods of ProtectedModel nlp/sentiment is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may attach"},
	}, {
		name: "tenant port-forward", groups: tenant, target: modelPod, subresource: "portforward", w: sentiment,
		want: policy.Decision{Rule: policy.RulePortForward, Workload: sentiment,
			Message: "port-forwarding to pods of ProtectedModel nlp/sentiment is denied: it goes around the model's NetworkPolicy, and it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may port-forward"},
	}, {
		name: "tenant pod proxy", groups: tenant, target: modelPod, subresource: "proxy", w: sentiment,
		want: policy.Decision{Rule: policy.RulePodProxy, Workload: sentiment,
			Message: "proxying to pods of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call its Service, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward"},
	}, {
		name: "break-glass members may not proxy either", groups: oncall, target: modelPod, subresource: "proxy", w: sentiment,
		want: policy.Decision{Rule: policy.RulePodProxy, Workload: sentiment,
			Message: "proxying to pods of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call its Service, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward"},
	}, {
		name: "tenant service proxy", groups: oncall, target: service, subresource: "proxy", w: sentiment,
		want: policy.Decision{Rule: policy.RuleServiceProxy, Workload: sentiment,
			Message: "proxying to Service nlp/sentiment of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call the Service directly, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward to its pods"},
	}, {
		name: "break-glass exec", groups: oncall, target: modelPod, subresource: "exec", w: sentiment,
		want: policy.Decision{Allowed: true, Workload: sentiment, Session: "as a member of break-glass group sre-oncall"},
	}, {
		name: "break-glass attach", groups: oncall, target: modelPod, subresource: "attach", w: sentiment,
		want: policy.Decision{Allowed: true, Workload: sentiment, Session: "as a member of break-glass group sre-oncall"},
	}, {
		name: "break-glass port-forward", groups: oncall, target: modelPod, subresource: "portforward", w: sentiment,
		want: policy.Decision{Allowed: true, Workload: sentiment, Session: "as a member of break-glass group sre-oncall"},
	}, {
		name: "another model's break-glass group", groups: []string{"ml-oncall"}, target: modelPod, subresource: "exec", w: sentiment,
		want: policy.Decision{Rule: policy.RuleExec, Workload: sentiment,
			Message: "exec into pods of ProtectedModel nlp/sentiment is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may exec"},
	}, {
		name: "cluster administrator, recorded", r: policy.ClusterAdmin, target: modelPod, subresource: "proxy", w: sentiment,
		want: policy.Decision{Allowed: true, Workload: sentiment, Session: "as a cluster administrator (system:masters)"},
	}, {
		name: "the operator, recorded", r: policy.Operator, target: modelPod, subresource: "exec", w: sentiment,
		want: policy.Decision{Allowed: true, Workload: sentiment, Session: "as the ModelGuard operator"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := policy.Connect(tt.r, tt.groups, tt.target, tt.subresource, tt.w)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Connect (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEphemeralContainers(t *testing.T) {
	tests := []struct {
		name string
		r    policy.Requester
		w    policy.Workload
		want policy.Decision
	}{{
		name: "tenant, break-glass member or not", r: policy.Tenant, w: sentiment,
		want: policy.Decision{Rule: policy.RuleEphemeralContainers, Workload: sentiment,
			Message: "adding debug containers to pod nlp/sentiment-7c9-x of ProtectedModel nlp/sentiment is denied: a container added to the pod reads its memory-backed weights; members of spec.access.breakGlassGroups [sre-oncall] may exec into it"},
	}, {
		name: "no break-glass groups", r: policy.Tenant, w: locked,
		want: policy.Decision{Rule: policy.RuleEphemeralContainers, Workload: locked,
			Message: "adding debug containers to pod nlp/sentiment-7c9-x of ProtectedModel nlp/locked is denied: a container added to the pod reads its memory-backed weights; its spec.access.breakGlassGroups is empty, so nobody may exec into it; the platform team can name an on-call group there"},
	}, {
		name: "cluster administrator", r: policy.ClusterAdmin, w: sentiment, want: policy.Allowed(),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.EphemeralContainers(tt.r, modelPod, tt.w)); diff != "" {
				t.Errorf("EphemeralContainers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestManagedChange(t *testing.T) {
	deployment := policy.ObjectRef{Kind: "Deployment", Namespace: "nlp", Name: "sentiment"}
	unnamed := policy.Workload{Namespace: "nlp"}
	tests := []struct {
		name   string
		r      policy.Requester
		change policy.Change
		obj    policy.ObjectRef
		w      policy.Workload
		want   policy.Decision
	}{{
		name: "tenant adds a sidecar", r: policy.Tenant, change: policy.Update, obj: deployment, w: sentiment,
		want: policy.Decision{Rule: policy.RuleManagedObject, Workload: sentiment,
			Message: "changing Deployment nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it"},
	}, {
		name: "tenant scales", r: policy.Tenant, change: policy.Scale, obj: deployment, w: sentiment,
		want: policy.Decision{Rule: policy.RuleManagedObject, Workload: sentiment,
			Message: "scaling Deployment nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it"},
	}, {
		name: "tenant deletes a model pod", r: policy.Tenant, change: policy.Delete, obj: modelPod, w: sentiment,
		want: policy.Decision{Rule: policy.RuleManagedObject, Workload: sentiment,
			Message: "deleting Pod nlp/sentiment-7c9-x is denied: it is a pod of ProtectedModel nlp/sentiment, and a replacement would unseal the weights again whenever a tenant chose; the platform team changes it through the ProtectedModel's spec, and the operator applies it"},
	}, {
		name: "tenant evicts a model pod", r: policy.Tenant, change: policy.Evict, obj: modelPod, w: sentiment,
		want: policy.Decision{Rule: policy.RuleManagedObject, Workload: sentiment,
			Message: "evicting Pod nlp/sentiment-7c9-x is denied: it is a pod of ProtectedModel nlp/sentiment, and a replacement would unseal the weights again whenever a tenant chose; the platform team changes it through the ProtectedModel's spec, and the operator applies it"},
	}, {
		name: "tenant creates an object labelled managed", r: policy.Tenant, change: policy.Create,
		obj: policy.ObjectRef{Kind: "Service", Namespace: "nlp"}, w: unnamed,
		want: policy.Decision{Rule: policy.RuleManagedObject, Workload: unnamed,
			Message: "creating a new Service in namespace nlp is denied: ModelGuard manages it for a ModelGuard-protected workload in namespace nlp and only the operator changes it; the platform team changes protected workloads through their ModelGuard resources"},
	}, {
		name: "the Deployment controller", r: policy.SystemController, change: policy.Update, obj: deployment, w: sentiment, want: policy.Allowed(),
	}, {
		name: "a node deletes its pod", r: policy.Node, change: policy.Delete, obj: modelPod, w: sentiment, want: policy.Allowed(),
	}, {
		name: "Kueue admits a Job", r: policy.TrustedController, change: policy.Update, obj: deployment, w: finetune, want: policy.Allowed(),
	}, {
		name: "the operator", r: policy.Operator, change: policy.Delete, obj: deployment, w: sentiment, want: policy.Allowed(),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.ManagedChange(tt.r, tt.change, tt.obj, tt.w)); diff != "" {
				t.Errorf("ManagedChange (-want +got):\n%s", diff)
			}
		})
	}
}

func TestModelGuardLabelChanges(t *testing.T) {
	managed := map[string]string{"app.kubernetes.io/managed-by": "modelguard", "modelguard.dev/model": "sentiment", "modelguard.dev/protected": "true", "app": "x"}
	tests := []struct {
		name     string
		old, new map[string]string
		want     policy.LabelChanges
	}{
		{"create without ours", nil, map[string]string{"app": "x", "app.kubernetes.io/managed-by": "helm"}, policy.LabelChanges{}},
		{"create with ours", nil, managed, policy.LabelChanges{Added: []string{"app.kubernetes.io/managed-by=modelguard", "modelguard.dev/model", "modelguard.dev/protected"}}},
		{"unchanged", managed, managed, policy.LabelChanges{}},
		{"other labels change", map[string]string{"modelguard.dev/model": "m", "app": "a"}, map[string]string{"modelguard.dev/model": "m", "app": "b"}, policy.LabelChanges{}},
		{"model label added", map[string]string{"app": "x"}, map[string]string{"app": "x", "modelguard.dev/model": "sentiment"}, policy.LabelChanges{Added: []string{"modelguard.dev/model"}}},
		{"protected label removed", managed, map[string]string{"app.kubernetes.io/managed-by": "modelguard", "modelguard.dev/model": "sentiment"}, policy.LabelChanges{Removed: []string{"modelguard.dev/protected"}}},
		{"model renamed", map[string]string{"modelguard.dev/model": "a"}, map[string]string{"modelguard.dev/model": "b"}, policy.LabelChanges{Changed: []string{"modelguard.dev/model"}}},
		{"managed-by handed to helm", map[string]string{"app.kubernetes.io/managed-by": "modelguard"}, map[string]string{"app.kubernetes.io/managed-by": "helm"}, policy.LabelChanges{Removed: []string{"app.kubernetes.io/managed-by=modelguard"}}},
		{"managed-by taken from helm", map[string]string{"app.kubernetes.io/managed-by": "helm"}, map[string]string{"app.kubernetes.io/managed-by": "modelguard"}, policy.LabelChanges{Added: []string{"app.kubernetes.io/managed-by=modelguard"}}},
		{"any modelguard.dev key", nil, map[string]string{"modelguard.dev/anything": ""}, policy.LabelChanges{Added: []string{"modelguard.dev/anything"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.ModelGuardLabelChanges(tt.old, tt.new)); diff != "" {
				t.Errorf("ModelGuardLabelChanges (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLabels(t *testing.T) {
	pod := policy.ObjectRef{Kind: "Pod", Namespace: "nlp", Name: "impostor"}
	plain := map[string]string{"app": "web"}
	impostor := map[string]string{"app": "web", "modelguard.dev/model": "sentiment", "modelguard.dev/component": "server"}
	sentimentNamed := policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "sentiment"}
	tests := []struct {
		name     string
		r        policy.Requester
		old, new map[string]string
		want     policy.Decision
	}{{
		name: "tenant makes a pod an endpoint of the model", r: policy.Tenant, old: plain, new: impostor,
		want: policy.Decision{Rule: policy.RuleLabels, Workload: sentimentNamed,
			Message: "adding labels modelguard.dev/component, modelguard.dev/model on Pod nlp/impostor is denied: ModelGuard's labels decide which pods belong to ProtectedModel nlp/sentiment, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; the platform team changes it through the ProtectedModel's spec, and the operator applies it"},
	}, {
		name: "tenant takes the protected label off", r: policy.Tenant,
		old: map[string]string{"modelguard.dev/model": "sentiment", "modelguard.dev/protected": "true"}, new: map[string]string{"modelguard.dev/model": "sentiment"},
		want: policy.Decision{Rule: policy.RuleLabels, Workload: sentimentNamed,
			Message: "removing label modelguard.dev/protected on Pod nlp/impostor is denied: ModelGuard's labels decide which pods belong to ProtectedModel nlp/sentiment, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; the platform team changes it through the ProtectedModel's spec, and the operator applies it"},
	}, {
		name: "tenant relabels unrelated labels", r: policy.Tenant, old: impostor, new: mergeLabels(impostor, map[string]string{"app": "api"}), want: policy.Allowed(),
	}, {
		name: "the operator", r: policy.Operator, old: plain, new: impostor, want: policy.Allowed(),
	}, {
		name: "the ReplicaSet controller", r: policy.SystemController, old: nil, new: impostor, want: policy.Allowed(),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.Labels(tt.r, pod, tt.old, tt.new)); diff != "" {
				t.Errorf("Labels (-want +got):\n%s", diff)
			}
		})
	}
}

func mergeLabels(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func TestLookAlike(t *testing.T) {
	sentimentNamed := policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "sentiment"}
	finetuneNamed := policy.Workload{Kind: "TrainingJob", Namespace: "nlp", Name: "finetune"}
	copyTo := policy.ObjectRef{Kind: "Pod", Namespace: "nlp", Name: "sentiment-debug"}
	deployment := policy.ObjectRef{Kind: "Deployment", Namespace: "nlp", Name: "mine"}
	usesSA := policy.PodTraits{ServiceAccount: "sentiment", ServiceAccountOf: sentimentNamed}
	labelled := policy.PodTraits{Labels: []string{"app.kubernetes.io/managed-by=modelguard", "modelguard.dev/model"}, LabelsOf: sentimentNamed}
	mountsOutput := policy.PodTraits{Claims: []policy.ProtectedClaim{{Name: "finetune-output", Of: finetuneNamed}}}
	tests := []struct {
		name         string
		r            policy.Requester
		change       policy.Change
		obj          policy.ObjectRef
		template     bool
		traits       policy.PodTraits
		w            policy.Workload
		managedOwner bool
		want         policy.Decision
	}{{
		name: "kubectl debug --copy-to keeps the ServiceAccount", r: policy.Tenant, change: policy.Create, obj: copyTo, traits: usesSA, w: sentiment,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: sentiment,
			Message: "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods"},
	}, {
		name: "a pod given the model's labels", r: policy.Tenant, change: policy.Create, obj: copyTo, traits: labelled, w: sentiment,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: sentiment,
			Message: "creating Pod nlp/sentiment-debug is denied: it carries ModelGuard's labels app.kubernetes.io/managed-by=modelguard, modelguard.dev/model; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods"},
	}, {
		name: "a pod mounting a training job's checkpoints", r: policy.Tenant, change: policy.Create, obj: copyTo, traits: mountsOutput, w: finetune,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: finetune,
			Message: "creating Pod nlp/sentiment-debug is denied: it mounts PersistentVolumeClaim finetune-output, which holds data of TrainingJob nlp/finetune; only the ReplicaSet or Job that ModelGuard manages for TrainingJob nlp/finetune may create such pods; to debug it, members of spec.access.breakGlassGroups [ml-oncall] may exec into its pods"},
	}, {
		name: "a tenant Deployment running as a model without break-glass groups", r: policy.Tenant, change: policy.Update, obj: deployment, template: true, traits: usesSA, w: sentimentNamed,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: sentimentNamed,
			Message: "changing Deployment nlp/mine is denied: its pod template runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only ModelGuard creates workloads whose pods pass for those of ProtectedModel nlp/sentiment; to debug it, its spec.access.breakGlassGroups is empty, so nobody may exec into its pods; the platform team can name an on-call group there"},
	}, {
		name: "the ReplicaSet controller for a tenant's ReplicaSet", r: policy.SystemController, change: policy.Create, obj: copyTo, traits: usesSA, w: sentiment, managedOwner: false,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: sentiment,
			Message: "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods"},
	}, {
		name: "the ReplicaSet controller for the model's ReplicaSet", r: policy.SystemController, change: policy.Create, obj: copyTo, traits: usesSA, w: sentiment, managedOwner: true,
		want: policy.Allowed(),
	}, {
		name: "a tenant naming the managed ReplicaSet as owner", r: policy.Tenant, change: policy.Create, obj: copyTo, traits: labelled, w: sentiment, managedOwner: true,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: sentiment,
			Message: "creating Pod nlp/sentiment-debug is denied: it carries ModelGuard's labels app.kubernetes.io/managed-by=modelguard, modelguard.dev/model; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods"},
	}, {
		name: "a node's mirror pod", r: policy.Node, change: policy.Create, obj: copyTo, traits: usesSA, w: sentiment,
		want: policy.Decision{Rule: policy.RuleLookAlikePod, Workload: sentiment,
			Message: "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods"},
	}, {
		name: "the operator's Deployment", r: policy.Operator, change: policy.Create, obj: deployment, template: true, traits: usesSA, w: sentiment, want: policy.Allowed(),
	}, {
		name: "an ordinary pod", r: policy.Tenant, change: policy.Create, obj: copyTo, w: sentiment, want: policy.Allowed(),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := policy.LookAlike(tt.r, tt.change, tt.obj, tt.template, tt.traits, tt.w, tt.managedOwner)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("LookAlike (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPodTraitsWorkload(t *testing.T) {
	m := policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "m"}
	j := policy.Workload{Kind: "TrainingJob", Namespace: "nlp", Name: "j"}
	tests := []struct {
		name   string
		traits policy.PodTraits
		want   policy.Workload
	}{
		{"the ServiceAccount's first", policy.PodTraits{ServiceAccount: "m", ServiceAccountOf: m, Claims: []policy.ProtectedClaim{{Name: "c", Of: j}}, LabelsOf: j}, m},
		{"then the claim's", policy.PodTraits{Claims: []policy.ProtectedClaim{{Name: "c", Of: j}}, LabelsOf: m}, j},
		{"then the labels'", policy.PodTraits{Labels: []string{"modelguard.dev/model"}, LabelsOf: m}, m},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.traits.Workload()); diff != "" {
				t.Errorf("Workload (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTokenRequest(t *testing.T) {
	sa := policy.ObjectRef{Kind: "ServiceAccount", Namespace: "nlp", Name: "sentiment"}
	denied := policy.Decision{Rule: policy.RuleServiceAccountToken, Workload: sentiment,
		Message: "creating a token for ServiceAccount nlp/sentiment is denied: it is the identity of the pods of ProtectedModel nlp/sentiment, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens"}
	tests := []struct {
		name string
		r    policy.Requester
		want policy.Decision
	}{
		{"a tenant", policy.Tenant, denied},
		{"the operator asks for none", policy.Operator, denied},
		{"a cluster administrator", policy.ClusterAdmin, denied},
		{"a system controller", policy.SystemController, denied},
		{"the kubelet", policy.Node, policy.Allowed()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.TokenRequest(tt.r, sa, sentiment)); diff != "" {
				t.Errorf("TokenRequest (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSelectsProtectedPods(t *testing.T) {
	m := policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "sentiment"}
	j := policy.Workload{Kind: "TrainingJob", Namespace: "nlp", Name: "finetune"}
	server := map[string]string{"app.kubernetes.io/managed-by": "modelguard", "modelguard.dev/model": "sentiment", "modelguard.dev/protected": "true", "modelguard.dev/component": "server"}
	trainer := map[string]string{"app.kubernetes.io/managed-by": "modelguard", "modelguard.dev/training-job": "finetune", "modelguard.dev/protected": "true"}
	pods := []policy.ProtectedPods{{Workload: m, Labels: server}, {Workload: j, Labels: trainer}, {Workload: m, Labels: mergeLabels(server, map[string]string{"pod-template-hash": "7c9"})}}
	tests := []struct {
		name     string
		selector metav1.LabelSelector
		want     []policy.Workload
	}{
		{"empty selects all, once each", metav1.LabelSelector{}, []policy.Workload{m, j}},
		{"the model's labels", metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "sentiment"}}, []policy.Workload{m}},
		{"another app", metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, nil},
		{"everything without a protected label", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "modelguard.dev/protected", Operator: metav1.LabelSelectorOpDoesNotExist}}}, nil},
		{"an expression over the job", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "modelguard.dev/training-job", Operator: metav1.LabelSelectorOpExists}}}, []policy.Workload{j}},
		{"invalid selects all", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}, []policy.Workload{m, j}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.SelectsProtectedPods(tt.selector, pods)); diff != "" {
				t.Errorf("SelectsProtectedPods (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNetworkPolicy(t *testing.T) {
	m := policy.Workload{Kind: "ProtectedModel", Namespace: "nlp", Name: "sentiment"}
	pods := []policy.ProtectedPods{{Workload: m, Labels: map[string]string{"modelguard.dev/model": "sentiment", "modelguard.dev/protected": "true"}}}
	np := policy.ObjectRef{Kind: "NetworkPolicy", Namespace: "nlp", Name: "allow-all"}
	tests := []struct {
		name     string
		r        policy.Requester
		selector metav1.LabelSelector
		want     policy.Decision
	}{{
		name: "a tenant's allow-all", r: policy.Tenant, selector: metav1.LabelSelector{},
		want: policy.Decision{Rule: policy.RuleNetworkPolicy, Workload: m,
			Message: "creating NetworkPolicy nlp/allow-all is denied: its podSelector selects the pods of ProtectedModel nlp/sentiment (an empty podSelector selects every pod in the namespace), and NetworkPolicies add up, so it would let in traffic that the model's own policy refuses; the platform team admits clients in spec.network.allowedClients, and a policy of yours can leave protected pods out with the expression modelguard.dev/protected DoesNotExist"},
	}, {
		name: "a tenant's policy for the model", r: policy.Tenant, selector: metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "sentiment"}},
		want: policy.Decision{Rule: policy.RuleNetworkPolicy, Workload: m,
			Message: "creating NetworkPolicy nlp/allow-all is denied: its podSelector selects the pods of ProtectedModel nlp/sentiment, and NetworkPolicies add up, so it would let in traffic that the model's own policy refuses; the platform team admits clients in spec.network.allowedClients, and a policy of yours can leave protected pods out with the expression modelguard.dev/protected DoesNotExist"},
	}, {
		name: "a tenant's allow-all that leaves protected pods out", r: policy.Tenant,
		selector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "modelguard.dev/protected", Operator: metav1.LabelSelectorOpDoesNotExist}}},
		want:     policy.Allowed(),
	}, {
		name: "a system controller is held to it too", r: policy.SystemController, selector: metav1.LabelSelector{},
		want: policy.Decision{Rule: policy.RuleNetworkPolicy, Workload: m,
			Message: "creating NetworkPolicy nlp/allow-all is denied: its podSelector selects the pods of ProtectedModel nlp/sentiment (an empty podSelector selects every pod in the namespace), and NetworkPolicies add up, so it would let in traffic that the model's own policy refuses; the platform team admits clients in spec.network.allowedClients, and a policy of yours can leave protected pods out with the expression modelguard.dev/protected DoesNotExist"},
	}, {
		name: "the operator's own policy", r: policy.Operator, selector: metav1.LabelSelector{}, want: policy.Allowed(),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.NetworkPolicy(tt.r, policy.Create, np, tt.selector, pods)); diff != "" {
				t.Errorf("NetworkPolicy (-want +got):\n%s", diff)
			}
		})
	}
	if d := policy.NetworkPolicy(policy.Tenant, policy.Create, np, metav1.LabelSelector{}, nil); !d.Allowed {
		t.Errorf("with no protected pods, an allow-all is denied: %s", d.Message)
	}
}

func TestFailClosed(t *testing.T) {
	want := policy.Decision{Rule: policy.RuleFailClosed,
		Message: "ModelGuard's admission guard could not decide on connect pods/exec nlp/x and denies it to fail closed: reading pod nlp/x: etcdserver: request timed out; retry shortly, and if it persists ask the platform team to check the operator"}
	if diff := cmp.Diff(want, policy.FailClosed("connect pods/exec nlp/x", errors.New("reading pod nlp/x: etcdserver: request timed out"))); diff != "" {
		t.Errorf("FailClosed (-want +got):\n%s", diff)
	}
}
