package integration

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

type PMW = builders.ProtectedModelWrapper
type TJW = builders.TrainingJobWrapper

// invalidCase is an object the API server must reject, the field it must
// blame, and words of the message that say what is expected.
type invalidCase struct {
	name  string
	build func(t *testing.T, ns string) client.Object
	field string
	want  string
}

var longName = "m" + strings.Repeat("x", 50) // 51 characters

// badModelKey is what the API server says of a modelKey that is not a
// ModelKey name.
const badModelKey = "key.modelKey must be a ModelKey name: a lowercase RFC 1123 subdomain"

// withBaseWeights gives a TrainingJob minimal valid baseWeights.
func withBaseWeights(w *TJW) { w.BaseWeights(builders.MakeWeights(builders.DefaultModelKey).Obj()) }

// rootField is how the API server names the field of a rule on the object's
// root. The metadata.name rules must live there (a CRD schema cannot carry
// rules inside metadata), so their messages name metadata.name themselves.
const rootField = "<nil>"

// invalidObjects is the rejection table. Every case starts from the minimal
// valid object of builders (TestMinimalObjectsAreValid proves those pass) and
// breaks one thing, so that the rejection can only come from that thing.
var invalidObjects = []invalidCase{
	// metadata.name: children reuse it, so it must be a short DNS-1035 label.
	{"pm name longer than 50", pm(func(w *PMW) { w.Name = longName }), rootField, "metadata.name must be at most 50 characters"},
	{"pm name starts with digit", pm(func(w *PMW) { w.Name = "1model" }), rootField, "metadata.name must be a DNS-1035 label"},
	{"pm name contains dot", pm(func(w *PMW) { w.Name = "my.model" }), rootField, "metadata.name must be a DNS-1035 label"},
	{"tj name longer than 50", tj(func(w *TJW) { w.Name = longName }), rootField, "metadata.name must be at most 50 characters"},
	{"tj name contains dot", tj(func(w *TJW) { w.Name = "job.v2" }), rootField, "metadata.name must be a DNS-1035 label"},

	// ownership
	{"ownership missing", rawPM(nil, drop("spec", "ownership")), "spec.ownership", "Required value"},
	{"owner missing", rawPM(nil, drop("spec", "ownership", "owner")), "spec.ownership.owner", "Required value"},
	{"owner empty", pm(func(w *PMW) { w.Owner("") }), "spec.ownership.owner", "at least 1 chars long"},
	{"owner too long", pm(func(w *PMW) { w.Owner(strings.Repeat("a", 257)) }), "spec.ownership.owner", "Too long"},
	{"license missing", rawPM(nil, drop("spec", "ownership", "license")), "spec.ownership.license", "Required value"},
	{"license free text", pm(func(w *PMW) { w.License("our own license v2") }), "spec.ownership.license", "ownership.license must be an SPDX license expression"},
	{"license dangling operator", pm(func(w *PMW) { w.License("MIT AND") }), "spec.ownership.license", "ownership.license must be an SPDX license expression"},
	{"contact not an email", pm(func(w *PMW) { w.Contact("legal team") }), "spec.ownership.contact", "ownership.contact must be an email address"},
	{"classification unknown", pm(func(w *PMW) { w.Classification("Secret") }), "spec.ownership.classification", `supported values: "Public", "Internal", "Confidential", "TradeSecret"`},
	{"patents more than 32", pm(func(w *PMW) { w.Patents(numbered("US-", 33)...) }), "spec.ownership.patents", "must have at most 32 items"},
	{"patents duplicate", pm(func(w *PMW) { w.Patents("US 1", "US 1") }), "spec.ownership.patents[1]", "Duplicate value"},
	{"patent empty", pm(func(w *PMW) { w.Patents("") }), "spec.ownership.patents[0]", "at least 1 chars long"},
	{"tj license missing", rawTJ(nil, drop("spec", "ownership", "license")), "spec.ownership.license", "Required value"},

	// weights.source
	{"source both volume and http", pm(func(w *PMW) {
		w.Spec.Weights.Source.HTTP = &mlv1alpha1.HTTPSource{URL: "https://models.example.com/b/"}
	}), "spec.weights.source", "weights.source must set exactly one of volume or http"},
	{"source neither", pm(func(w *PMW) { w.Spec.Weights.Source = mlv1alpha1.WeightsSource{} }), "spec.weights.source", "weights.source must set exactly one of volume or http"},
	{"volume claimName missing", rawPM(nil, drop("spec", "weights", "source", "volume", "claimName")), "spec.weights.source.volume.claimName", "Required value"},
	{"volume claimName not a DNS name", pm(func(w *PMW) { w.VolumeSource("Sealed_Models", "") }), "spec.weights.source.volume.claimName", "volume.claimName must be a lowercase RFC 1123 subdomain"},
	{"volume path absolute", pm(func(w *PMW) { w.VolumeSource("sealed", "/etc/bundle") }), "spec.weights.source.volume.path", "volume.path must be relative"},
	{"volume path escapes claim", pm(func(w *PMW) { w.VolumeSource("sealed", "models/../../etc") }), "spec.weights.source.volume.path", "must not contain '..'"},
	{"http url plain http", pm(func(w *PMW) { w.HTTPSource("http://models.example.com/b/") }), "spec.weights.source.http.url", "url must be an https URL"},
	{"http url not a URL", pm(func(w *PMW) { w.HTTPSource("models.example.com/b") }), "spec.weights.source.http.url", "url must be an https URL"},
	{"http url with credentials", pm(func(w *PMW) { w.HTTPSource("https://bob:hunter2@models.example.com/b/") }), "spec.weights.source.http.url", "url must not contain credentials"},

	// weights.digest
	{"digest missing", rawPM(nil, drop("spec", "weights", "digest")), "spec.weights.digest", "Required value"},
	{"digest too short", pm(func(w *PMW) { w.Digest("sha256:abc123") }), "spec.weights.digest", "weights.digest must be sha256: followed by 64 lowercase hex digits"},
	{"digest other algorithm", pm(func(w *PMW) { w.Digest("md5:" + strings.Repeat("a", 64)) }), "spec.weights.digest", "weights.digest must be sha256: followed by 64 lowercase hex digits"},
	{"digest uppercase hex", pm(func(w *PMW) { w.Digest("sha256:" + strings.Repeat("A", 64)) }), "spec.weights.digest", "weights.digest must be sha256: followed by 64 lowercase hex digits"},

	// weights.key names a cluster-scoped ModelKey; the key material and
	// where it lives are the ModelKey's business (modelkey_api_test.go).
	{"key missing", rawPM(nil, drop("spec", "weights", "key")), "spec.weights.key", "Required value"},
	{"key modelKey missing", rawPM(nil, drop("spec", "weights", "key", "modelKey")), "spec.weights.key.modelKey", "Required value"},
	{"key modelKey empty", pm(func(w *PMW) { w.ModelKey("") }), "spec.weights.key.modelKey", "at least 1 chars long"},
	{"key modelKey not a DNS name", pm(func(w *PMW) { w.ModelKey("Models_Prod") }), "spec.weights.key.modelKey", badModelKey},
	{"key modelKey with a namespace", pm(func(w *PMW) { w.ModelKey("ml-serving/models") }), "spec.weights.key.modelKey", badModelKey},
	{"key modelKey too long", pm(func(w *PMW) { w.ModelKey(strings.Repeat("k", 254)) }), "spec.weights.key.modelKey", "Too long"},
	// The in-namespace key sources are gone: the old fields are unknown, so
	// the API server prunes them and then finds no modelKey (with strict
	// field validation it names them: TestOldKeySourcesRejected).
	{"key old secretRef", rawPM(nil, drop("spec", "weights", "key", "modelKey"),
		set(map[string]any{"name": "model-kek", "key": "kek"}, "spec", "weights", "key", "secretRef")), "spec.weights.key.modelKey", "Required value"},
	{"key old awsKms", rawPM(nil, drop("spec", "weights", "key", "modelKey"),
		set(map[string]any{"keyId": "alias/models"}, "spec", "weights", "key", "awsKms")), "spec.weights.key.modelKey", "Required value"},

	// weights.memory
	{"memory missing", rawPM(nil, drop("spec", "weights", "memory")), "spec.weights.memory", "Required value"},
	{"memory zero", pm(func(w *PMW) { w.Memory("0") }), "spec.weights.memory", "weights.memory must be greater than 0"},
	{"memory negative", pm(func(w *PMW) { w.Memory("-1Gi") }), "spec.weights.memory", "weights.memory must be greater than 0"},
	{"memory above 4Ti", pm(func(w *PMW) { w.Memory("5Ti") }), "spec.weights.memory", "weights.memory must be at most 4Ti"},
	{"memory not a quantity", rawPM(nil, set("lots", "spec", "weights", "memory")), "spec.weights.memory", "should match"},

	// server
	{"server missing", rawPM(nil, drop("spec", "server")), "spec.server", "Required value"},
	{"server image empty", pm(func(w *PMW) { w.Image("") }), "spec.server.image", "at least 1 chars long"},
	{"server image with space", pm(func(w *PMW) { w.Image("serve latest") }), "spec.server.image", "server.image must be an image reference without spaces"},
	{"server port zero", rawPM(nil, set(int64(0), "spec", "server", "port")), "spec.server.port", "should be greater than or equal to 1"},
	{"server port above 65535", pm(func(w *PMW) { w.Port(70000) }), "spec.server.port", "should be less than or equal to 65535"},
	{"server replicas negative", pm(func(w *PMW) { w.Replicas(-1) }), "spec.server.replicas", "should be greater than or equal to 0"},
	{"server replicas above 1000", pm(func(w *PMW) { w.Replicas(1001) }), "spec.server.replicas", "should be less than or equal to 1000"},
	{"server readinessPath relative", pm(func(w *PMW) { w.ReadinessPath("healthz") }), "spec.server.readinessPath", "server.readinessPath must be an absolute HTTP path"},
	{"server modelMountPath relative", pm(func(w *PMW) { w.ModelMountPath("models") }), "spec.server.modelMountPath", "server.modelMountPath must be an absolute path"},
	{"server modelMountPath root", pm(func(w *PMW) { w.ModelMountPath("/") }), "spec.server.modelMountPath", "server.modelMountPath must not be the root directory"},
	{"server env duplicate name", pm(func(w *PMW) { w.Env("A", "1").Env("A", "2") }), "spec.server.env[1]", "Duplicate value"},

	// gpu
	{"gpu count above 64", pm(func(w *PMW) { w.GPUs(65) }), "spec.gpu.count", "should be less than or equal to 64"},
	{"gpu count negative", pm(func(w *PMW) { w.GPUs(-1) }), "spec.gpu.count", "should be greater than or equal to 0"},
	{"gpu products without count", pm(func(w *PMW) { w.GPUs(0).GPUProducts("NVIDIA-A100-SXM4-80GB") }), "spec.gpu.count", "gpu.products needs gpu.count greater than 0"},
	{"gpu minMemoryMiB without count", pm(func(w *PMW) { w.GPUs(0).GPUMinMemoryMiB(40960) }), "spec.gpu.count", "gpu.minMemoryMiB needs gpu.count greater than 0"},
	{"gpu resourceName without domain", pm(func(w *PMW) { w.GPUs(1).GPUResourceName("gpu") }), "spec.gpu.resourceName", "gpu.resourceName must be an extended resource name <domain>/<name>"},
	{"gpu resourceName in kubernetes.io", pm(func(w *PMW) { w.GPUs(1).GPUResourceName("kubernetes.io/gpu") }), "spec.gpu.resourceName", "gpu.resourceName must be an extended resource name"},
	{"gpu resourceName in a kubernetes.io subdomain", pm(func(w *PMW) { w.GPUs(1).GPUResourceName("gpu.kubernetes.io/a100") }), "spec.gpu.resourceName", "gpu.resourceName must be an extended resource name"},
	{"gpu resourceName empty name part", pm(func(w *PMW) { w.GPUs(1).GPUResourceName("nvidia.com/") }), "spec.gpu.resourceName", "gpu.resourceName must be an extended resource name <domain>/<name>"},
	{"gpu product not a label value", pm(func(w *PMW) { w.GPUs(1).GPUProducts("NVIDIA A100") }), "spec.gpu.products[0]", "gpu.products entries must be node label values"},
	{"gpu priorityClassName uppercase", pm(func(w *PMW) { w.GPUs(1).PriorityClass("High") }), "spec.gpu.priorityClassName", "gpu.priorityClassName must be a lowercase RFC 1123 subdomain"},
	{"gpu tolerations more than 32", pm(func(w *PMW) {
		for range 33 {
			w.GPUs(1).Toleration(corev1.Toleration{Key: "gpu", Operator: corev1.TolerationOpExists})
		}
	}), "spec.gpu.tolerations", "must have at most 32 items"},

	// network
	{"allowedClients entry empty", pm(func(w *PMW) { w.AllowClient(nil, nil) }), "spec.network.allowedClients[0]", "network.allowedClients entry must set namespaceSelector, podSelector or both"},
	{"allowedClients more than 32", pm(func(w *PMW) {
		for range 33 {
			w.AllowClientPods(map[string]string{"app": "web"})
		}
	}), "spec.network.allowedClients", "must have at most 32 items"},
	{"egress cidr prefix too long", pm(func(w *PMW) { w.AllowEgress("10.0.0.0/33") }), "spec.network.allowedEgress[0].cidr", "must be an IP range in CIDR notation"},
	{"egress cidr without prefix", pm(func(w *PMW) { w.AllowEgress("10.0.0.1") }), "spec.network.allowedEgress[0].cidr", "must be an IP range in CIDR notation"},
	{"egress cidr a hostname", pm(func(w *PMW) { w.AllowEgress("models.example.com/32") }), "spec.network.allowedEgress[0].cidr", "must be an IP range in CIDR notation"},
	{"egress except not a cidr", pm(func(w *PMW) {
		w.EgressRule(mlv1alpha1.EgressRule{CIDR: "10.0.0.0/8", Except: []mlv1alpha1.CIDR{"10.1.0.0"}})
	}), "spec.network.allowedEgress[0].except[0]", "must be an IP range in CIDR notation"},
	{"egress except outside cidr", pm(func(w *PMW) {
		w.EgressRule(mlv1alpha1.EgressRule{CIDR: "10.0.0.0/8", Except: []mlv1alpha1.CIDR{"192.168.0.0/16"}})
	}), "spec.network.allowedEgress[0].except", "except ranges must lie inside cidr"},
	{"egress port zero", pm(func(w *PMW) {
		w.EgressRule(mlv1alpha1.EgressRule{CIDR: "10.0.0.0/8", Ports: []mlv1alpha1.NetworkPort{{Port: 0}}})
	}), "spec.network.allowedEgress[0].ports[0].port", "should be greater than or equal to 1"},
	{"egress endPort below port", pm(func(w *PMW) {
		w.EgressRule(mlv1alpha1.EgressRule{CIDR: "10.0.0.0/8", Ports: []mlv1alpha1.NetworkPort{{Port: 443, EndPort: int32p(80)}}})
	}), "spec.network.allowedEgress[0].ports[0].endPort", "endPort must not be less than port"},
	{"egress protocol unknown", pm(func(w *PMW) {
		w.EgressRule(mlv1alpha1.EgressRule{CIDR: "10.0.0.0/8", Ports: []mlv1alpha1.NetworkPort{{Protocol: "ICMP", Port: 1}}})
	}), "spec.network.allowedEgress[0].ports[0].protocol", `supported values: "TCP", "UDP", "SCTP"`},

	// access and runtime
	{"breakGlassGroups duplicate", pm(func(w *PMW) { w.BreakGlassGroups("sre", "sre") }), "spec.access.breakGlassGroups[1]", "Duplicate value"},
	{"breakGlassGroups empty name", pm(func(w *PMW) { w.BreakGlassGroups("") }), "spec.access.breakGlassGroups[0]", "at least 1 chars long"},
	{"runtimeClassName with space", pm(func(w *PMW) { w.RuntimeClass("kata cc") }), "spec.runtimeClassName", "runtimeClassName must be a lowercase RFC 1123 subdomain"},

	// TrainingJob
	{"tj image empty", tj(func(w *TJW) { w.Image("") }), "spec.image", "at least 1 chars long"},
	{"tj nodes zero", rawTJ(nil, set(int64(0), "spec", "nodes")), "spec.nodes", "should be greater than or equal to 1"},
	{"tj nodes above 512", tj(func(w *TJW) { w.Nodes(513) }), "spec.nodes", "should be less than or equal to 512"},
	{"tj gpu products without count", tj(func(w *TJW) { w.GPUs(0).GPUProducts("NVIDIA-H100-80GB-HBM3") }), "spec.gpu.count", "gpu.products needs gpu.count greater than 0"},
	{"tj output missing", rawTJ(nil, drop("spec", "output")), "spec.output", "Required value"},
	{"tj output size missing", rawTJ(nil, drop("spec", "output", "size")), "spec.output.size", "Required value"},
	{"tj output size zero", tj(func(w *TJW) { w.OutputSize("0") }), "spec.output.size", "output.size must be greater than 0"},
	{"tj output seal missing", rawTJ(nil, drop("spec", "output", "seal")), "spec.output.seal", "Required value"},
	{"tj output seal key missing", rawTJ(nil, drop("spec", "output", "seal", "key")), "spec.output.seal.key", "Required value"},
	{"tj output seal key modelKey missing", rawTJ(nil, drop("spec", "output", "seal", "key", "modelKey")), "spec.output.seal.key.modelKey", "Required value"},
	{"tj output seal key modelKey empty", tj(func(w *TJW) { w.SealKey("") }), "spec.output.seal.key.modelKey", "at least 1 chars long"},
	{"tj output seal key modelKey not a DNS name", tj(func(w *TJW) { w.SealKey("Models_Prod") }), "spec.output.seal.key.modelKey", badModelKey},
	{"tj output seal key old secretRef", rawTJ(nil, drop("spec", "output", "seal", "key", "modelKey"),
		set(map[string]any{"name": "model-kek", "key": "kek"}, "spec", "output", "seal", "key", "secretRef")), "spec.output.seal.key.modelKey", "Required value"},
	{"tj output seal key old vaultTransit", rawTJ(nil, drop("spec", "output", "seal", "key", "modelKey"),
		set(map[string]any{"address": "https://vault.example.com:8200", "keyName": "models", "role": "modelguard"}, "spec", "output", "seal", "key", "vaultTransit")),
		"spec.output.seal.key.modelKey", "Required value"},
	{"tj output storageClassName with space", tj(func(w *TJW) { w.StorageClass("fast ssd") }), "spec.output.storageClassName", "output.storageClassName must be a lowercase RFC 1123 subdomain"},
	{"tj promoteTo not DNS-1035", tj(func(w *TJW) { w.PromoteTo("Model_V2") }), "spec.output.promoteTo", "output.promoteTo must be a ProtectedModel name"},
	{"tj promoteTo longer than 50", tj(func(w *TJW) { w.PromoteTo(longName) }), "spec.output.promoteTo", "Too long"},
	{"tj data both claim and http", tj(func(w *TJW) {
		w.Spec.Data = []mlv1alpha1.TrainingData{{Name: "d", ClaimName: "c", HTTP: &mlv1alpha1.HTTPSource{URL: "https://data.example.com/d"}}}
	}), "spec.data[0]", "data entry must set exactly one of claimName or http"},
	{"tj data neither claim nor http", tj(func(w *TJW) { w.Spec.Data = []mlv1alpha1.TrainingData{{Name: "d"}} }), "spec.data[0]", "data entry must set exactly one of claimName or http"},
	{"tj data duplicate name", tj(func(w *TJW) { w.DataFromClaim("d", "a", true).DataFromClaim("d", "b", true) }), "spec.data[1]", "Duplicate value"},
	{"tj data name uppercase", tj(func(w *TJW) { w.DataFromClaim("Reviews", "c", true) }), "spec.data[0].name", "data name must be a lowercase DNS label"},
	{"tj data url plain http", tj(func(w *TJW) { w.DataFromURL("d", "http://data.example.com/d") }), "spec.data[0].http.url", "url must be an https URL"},
	{"tj data readOnly on http", tj(func(w *TJW) {
		w.Spec.Data = []mlv1alpha1.TrainingData{{Name: "d", ReadOnly: true, HTTP: &mlv1alpha1.HTTPSource{URL: "https://data.example.com/d"}}}
	}), "spec.data[0].readOnly", "data readOnly applies only to claimName"},
	{"tj baseWeights digest malformed", tj(func(w *TJW) { w.BaseWeights(builders.MakeWeights(builders.DefaultModelKey).Digest("sha256:xyz").Obj()) }), "spec.baseWeights.digest", "weights.digest must be sha256: followed by 64 lowercase hex digits"},
	{"tj baseWeights memory zero", tj(func(w *TJW) { w.BaseWeights(builders.MakeWeights(builders.DefaultModelKey).Memory("0").Obj()) }), "spec.baseWeights.memory", "weights.memory must be greater than 0"},
	{"tj baseWeights source neither", tj(func(w *TJW) {
		sw := builders.MakeWeights(builders.DefaultModelKey).Obj()
		sw.Source = mlv1alpha1.WeightsSource{}
		w.BaseWeights(sw)
	}), "spec.baseWeights.source", "weights.source must set exactly one of volume or http"},
	{"tj baseWeights key missing", rawTJ(withBaseWeights, drop("spec", "baseWeights", "key")), "spec.baseWeights.key", "Required value"},
	{"tj baseWeights key modelKey missing", rawTJ(withBaseWeights, drop("spec", "baseWeights", "key", "modelKey")), "spec.baseWeights.key.modelKey", "Required value"},
	{"tj baseWeights key modelKey empty", tj(func(w *TJW) { w.BaseWeights(builders.MakeWeights("").Obj()) }), "spec.baseWeights.key.modelKey", "at least 1 chars long"},
	{"tj baseWeights key modelKey not a DNS name", tj(func(w *TJW) { w.BaseWeights(builders.MakeWeights("Models_Prod").Obj()) }), "spec.baseWeights.key.modelKey", badModelKey},
	{"tj baseWeights key old secretRef", rawTJ(withBaseWeights, drop("spec", "baseWeights", "key", "modelKey"),
		set(map[string]any{"name": "model-kek", "key": "kek"}, "spec", "baseWeights", "key", "secretRef")), "spec.baseWeights.key.modelKey", "Required value"},
	{"tj queueName with space", tj(func(w *TJW) { w.QueueName("team queue") }), "spec.queueName", "queueName must be a LocalQueue name"},
	{"tj backoffLimit negative", tj(func(w *TJW) { w.BackoffLimit(-1) }), "spec.backoffLimit", "should be greater than or equal to 0"},
	{"tj backoffLimit above 100", tj(func(w *TJW) { w.BackoffLimit(101) }), "spec.backoffLimit", "should be less than or equal to 100"},
	{"tj activeDeadlineSeconds zero", tj(func(w *TJW) { w.ActiveDeadlineSeconds(0) }), "spec.activeDeadlineSeconds", "should be greater than or equal to 1"},
	{"tj egress cidr invalid", tj(func(w *TJW) { w.AllowEgress("10.0.0.256/24") }), "spec.network.allowedEgress[0].cidr", "must be an IP range in CIDR notation"},
	{"tj breakGlassGroups duplicate", tj(func(w *TJW) { w.BreakGlassGroups("sre", "sre") }), "spec.access.breakGlassGroups[1]", "Duplicate value"},
}

// TestMinimalObjectsAreValid proves that the starting points of the
// rejection table are accepted, so each rejection is due to its one change.
func TestMinimalObjectsAreValid(t *testing.T) {
	ns := newNamespace(t)
	for _, obj := range []client.Object{
		builders.MakeProtectedModel("model", ns).Obj(),
		builders.MakeTrainingJob("job", ns).Obj(),
	} {
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Errorf("minimal %T rejected: %v", obj, err)
		}
	}
}

// TestInvalidObjectsRejected sends every case of the rejection table to the
// real API server and checks that it is refused with an error on the right
// field whose message says what is expected.
func TestInvalidObjectsRejected(t *testing.T) {
	if len(invalidObjects) < 50 {
		t.Fatalf("the rejection table has %d cases; the API contract asks for at least 50", len(invalidObjects))
	}
	ns := newNamespace(t)
	seen := map[string]bool{}
	for _, tc := range invalidObjects {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			obj := tc.build(t, ns)
			err := env.Client.Create(context.Background(), obj)
			got := causes(t, err)
			// The whole error must name the field too: it is what kubectl
			// prints.
			wantField := tc.field
			if wantField == rootField {
				wantField = "metadata.name"
			}
			if !strings.Contains(err.Error(), wantField) {
				t.Errorf("error does not name %s:\n%v", wantField, err)
			}
			for _, c := range got {
				field, msg, _ := strings.Cut(c, ": ")
				if field == tc.field && strings.Contains(msg, tc.want) {
					t.Logf("rejected: %s", c)
					return
				}
			}
			t.Errorf("no error on field %q containing %q; the API server said:\n  %s",
				tc.field, tc.want, strings.Join(got, "\n  "))
		})
	}
}

// TestOldKeySourcesRejected sends manifests written for the removed
// in-namespace key sources (key: {secretRef|awsKms|vaultTransit: ...}) with
// strict field validation, as kubectl sends them, and checks that the API
// server refuses them naming the old field, for every place that names a key.
// Without strict validation the old field is pruned and the object is
// refused for lacking modelKey.
func TestOldKeySourcesRejected(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	oldSources := map[string]any{
		"secretRef":    map[string]any{"name": "model-kek", "key": "kek"},
		"awsKms":       map[string]any{"keyId": "alias/models", "region": "eu-west-1"},
		"vaultTransit": map[string]any{"address": "https://vault.example.com:8200", "keyName": "models", "role": "modelguard"},
	}
	places := []struct {
		name  string
		build func(edits ...rawEdit) func(*testing.T, string) client.Object
		path  []string
	}{
		{"ProtectedModel", func(e ...rawEdit) func(*testing.T, string) client.Object { return rawPM(nil, e...) },
			[]string{"spec", "weights", "key"}},
		{"TrainingJob", func(e ...rawEdit) func(*testing.T, string) client.Object { return rawTJ(withBaseWeights, e...) },
			[]string{"spec", "baseWeights", "key"}},
		{"TrainingJob", func(e ...rawEdit) func(*testing.T, string) client.Object { return rawTJ(nil, e...) },
			[]string{"spec", "output", "seal", "key"}},
	}
	for _, place := range places {
		for field, value := range oldSources {
			keyPath := strings.Join(place.path, ".")
			t.Run(place.name+"/"+keyPath+"."+field, func(t *testing.T) {
				build := place.build(set(map[string]any{field: value}, place.path...))

				// Strict (kubectl): refused before validation, naming the
				// old field.
				err := env.Client.Create(ctx, build(t, ns), client.FieldValidation(metav1.FieldValidationStrict))
				want := `strict decoding error: unknown field "` + keyPath + "." + field + `"`
				if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), want) {
					t.Errorf("strict: want a BadRequest containing %q, got %v", want, err)
				}

				// Default (Warn): the old field is pruned, and then the
				// ModelKey reference is missing.
				err = env.Client.Create(ctx, build(t, ns))
				if got := causes(t, err); !containsPrefix(got, keyPath+".modelKey: Required value") {
					t.Errorf("default: want a cause %q, got:\n  %s", keyPath+".modelKey: Required value", strings.Join(got, "\n  "))
				}
			})
		}
	}
}

// TestOwnerIsImmutable checks that ownership.owner cannot be rewritten, while
// the rest of the ownership record can be corrected.
func TestOwnerIsImmutable(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	for _, obj := range []client.Object{
		builders.MakeProtectedModel("model", ns).Owner("Acme Corp").Obj(),
		builders.MakeTrainingJob("job", ns).Owner("Acme Corp").Obj(),
	} {
		t.Run(obj.GetObjectKind().GroupVersionKind().Kind, func(t *testing.T) {
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatalf("creating: %v", err)
			}
			own := ownershipOf(obj)

			own.Contact = "legal@acme.example"
			if err := env.Client.Update(ctx, obj); err != nil {
				t.Fatalf("changing ownership.contact was rejected; only owner is immutable: %v", err)
			}

			own = ownershipOf(obj)
			own.Owner = "Globex Corporation"
			err := env.Client.Update(ctx, obj)
			got := causes(t, err)
			want := `spec.ownership.owner: Invalid value: "Globex Corporation": ownership.owner is immutable`
			for _, c := range got {
				if strings.HasPrefix(c, want) {
					return
				}
			}
			t.Errorf("want a cause starting %q, got:\n  %s", want, strings.Join(got, "\n  "))
		})
	}
}

func ownershipOf(obj client.Object) *mlv1alpha1.Ownership {
	switch o := obj.(type) {
	case *mlv1alpha1.ProtectedModel:
		return &o.Spec.Ownership
	case *mlv1alpha1.TrainingJob:
		return &o.Spec.Ownership
	}
	panic("no ownership in " + obj.GetObjectKind().GroupVersionKind().Kind)
}

// TestStatusPhaseValidated checks that the status subresource enforces the
// phase enums, so a controller bug cannot publish a phase tools do not know.
func TestStatusPhaseValidated(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)

	model := builders.MakeProtectedModel("model", ns).Obj()
	job := builders.MakeTrainingJob("job", ns).Obj()
	for _, obj := range []client.Object{model, job} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatalf("creating: %v", err)
		}
	}
	model.Status.Phase = "Serving"
	job.Status.Phase = "Done"
	for _, tc := range []struct {
		obj  client.Object
		want string
	}{
		{model, `status.phase: Unsupported value: "Serving": supported values: "Pending", "Protected", "Degraded", "Failed"`},
		{job, `status.phase: Unsupported value: "Done": supported values: "Pending", "Admitted", "Running", "Sealing", "Succeeded", "Failed"`},
	} {
		err := env.Client.Status().Update(ctx, tc.obj)
		if got := causes(t, err); !containsPrefix(got, tc.want) {
			t.Errorf("want a cause %q, got:\n  %s", tc.want, strings.Join(got, "\n  "))
		}
	}

	// Valid phases and conditions are stored.
	model.Status.Phase = mlv1alpha1.ModelPhaseProtected
	model.Status.Conditions = []metav1.Condition{builders.Condition(mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable, "1/1 replicas ready", model.Generation)}
	if err := env.Client.Status().Update(ctx, model); err != nil {
		t.Fatalf("valid status rejected: %v", err)
	}
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strings.Repeat("1", i+1)
	}
	return out
}

func int32p(v int32) *int32 { return &v }
