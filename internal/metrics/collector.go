// Package metrics exposes ModelGuard's own Prometheus metrics, next to the
// controller-runtime ones, on the manager's metrics endpoint.
//
// The metrics are computed at scrape time from the manager's informer cache
// rather than updated by the reconcilers: the cache already holds every
// ProtectedModel, TrainingJob and managed pod, so the numbers are always
// consistent with the cluster, survive restarts and leader changes, and the
// controllers need no metrics calls.
package metrics

import (
	"context"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/seal"
)

// The collector lists these through the manager's cache; controller-gen
// merges the markers into config/rbac/role.yaml.
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels;trainingjobs,verbs=get;list;watch
// +kubebuilder:rbac:groups=core,resources=pods,verbs=get;list;watch

// PhaseUnknown is the phase label of objects that have no status.phase yet.
const PhaseUnknown = "Unknown"

// listTimeout bounds each List so that a cache that cannot sync (for example
// for lack of RBAC) slows a scrape down but never hangs it.
const listTimeout = 5 * time.Second

// Collector is a prometheus.Collector that reports the ModelGuard workload
// metrics from a client.Reader, normally the manager's cache.
type Collector struct {
	reader client.Reader
	log    logr.Logger

	models        *prometheus.Desc
	conditions    *prometheus.Desc
	trainingJobs  *prometheus.Desc
	unsealSeconds *prometheus.Desc
	unsealBytes   *prometheus.Desc
	listErrors    *prometheus.CounterVec
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector that lists from reader at every scrape.
// Register it with controller-runtime's metrics.Registry.
func NewCollector(reader client.Reader) *Collector {
	return &Collector{
		reader: reader,
		log:    logf.Log.WithName("metrics"),
		models: prometheus.NewDesc("modelguard_models",
			"Number of ProtectedModels by namespace and status.phase (Unknown: no status yet).",
			[]string{"namespace", "phase"}, nil),
		conditions: prometheus.NewDesc("modelguard_protection_condition",
			"Number of ProtectedModels by protection condition type and status; a model without the condition counts as Unknown.",
			[]string{"type", "status"}, nil),
		trainingJobs: prometheus.NewDesc("modelguard_trainingjobs",
			"Number of TrainingJobs by status.phase (Unknown: no status yet).",
			[]string{"phase"}, nil),
		unsealSeconds: prometheus.NewDesc("modelguard_unseal_seconds",
			"Seconds the unseal init container of a model server pod took to verify and decrypt the weights, from its termination message.",
			[]string{"namespace", "model", "pod"}, nil),
		unsealBytes: prometheus.NewDesc("modelguard_unseal_bytes",
			"Plaintext bytes the unseal init container of a model server pod decrypted into memory, from its termination message.",
			[]string{"namespace", "model", "pod"}, nil),
		listErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modelguard_metrics_list_errors_total",
			Help: "Scrapes whose metrics for a resource were left out because listing it from the cache failed.",
		}, []string{"resource"}),
	}
}

// Describe sends the descriptors of every metric the collector reports.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.models
	ch <- c.conditions
	ch <- c.trainingJobs
	ch <- c.unsealSeconds
	ch <- c.unsealBytes
	c.listErrors.Describe(ch)
}

// Collect lists the objects and sends the metrics. A failed List leaves that
// resource's metrics out of this scrape and counts the failure, because the
// metrics handler fails the whole scrape on an invalid metric, which would
// also hide the controller-runtime metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()

	models := &mlv1alpha1.ProtectedModelList{}
	if err := c.reader.List(ctx, models); err != nil {
		c.listFailed("protectedmodels", err)
	} else {
		c.collectModels(ch, models.Items)
	}

	jobs := &mlv1alpha1.TrainingJobList{}
	if err := c.reader.List(ctx, jobs); err != nil {
		c.listFailed("trainingjobs", err)
	} else {
		c.collectTrainingJobs(ch, jobs.Items)
	}

	pods := &corev1.PodList{}
	if err := c.reader.List(ctx, pods, client.MatchingLabels{
		mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue,
		builder.LabelComponent:    builder.ComponentServer,
	}); err != nil {
		c.listFailed("pods", err)
	} else {
		c.collectUnseals(ch, pods.Items)
	}

	c.listErrors.Collect(ch)
}

func (c *Collector) listFailed(resource string, err error) {
	c.listErrors.WithLabelValues(resource).Inc()
	c.log.Error(err, "Listing for metrics failed; leaving its metrics out of this scrape", "resource", resource)
}

var modelPhases = []string{
	string(mlv1alpha1.ModelPhasePending),
	string(mlv1alpha1.ModelPhaseProtected),
	string(mlv1alpha1.ModelPhaseDegraded),
	string(mlv1alpha1.ModelPhaseFailed),
	PhaseUnknown,
}

var trainingPhases = []string{
	string(mlv1alpha1.TrainingPhasePending),
	string(mlv1alpha1.TrainingPhaseAdmitted),
	string(mlv1alpha1.TrainingPhaseRunning),
	string(mlv1alpha1.TrainingPhaseSealing),
	string(mlv1alpha1.TrainingPhaseSucceeded),
	string(mlv1alpha1.TrainingPhaseFailed),
	PhaseUnknown,
}

var conditionStatuses = []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown}

// collectModels reports every phase, zeros included, for each namespace that
// has a model, so that a series does not vanish when its count drops to
// zero and alerts on it keep evaluating.
func (c *Collector) collectModels(ch chan<- prometheus.Metric, models []mlv1alpha1.ProtectedModel) {
	byNamespace := map[string]map[string]int{}
	conditions := map[string]map[metav1.ConditionStatus]int{}
	for _, t := range mlv1alpha1.ProtectionConditionTypes() {
		conditions[t] = map[metav1.ConditionStatus]int{}
	}
	for i := range models {
		m := &models[i]
		if byNamespace[m.Namespace] == nil {
			byNamespace[m.Namespace] = map[string]int{}
		}
		byNamespace[m.Namespace][phaseLabel(string(m.Status.Phase))]++
		for _, t := range mlv1alpha1.ProtectionConditionTypes() {
			status := metav1.ConditionUnknown
			if cond := meta.FindStatusCondition(m.Status.Conditions, t); cond != nil {
				status = cond.Status
			}
			conditions[t][status]++
		}
	}
	for ns, counts := range byNamespace {
		for _, phase := range modelPhases {
			ch <- prometheus.MustNewConstMetric(c.models, prometheus.GaugeValue, float64(counts[phase]), ns, phase)
		}
	}
	for _, t := range mlv1alpha1.ProtectionConditionTypes() {
		for _, s := range conditionStatuses {
			ch <- prometheus.MustNewConstMetric(c.conditions, prometheus.GaugeValue, float64(conditions[t][s]), t, string(s))
		}
	}
}

func (c *Collector) collectTrainingJobs(ch chan<- prometheus.Metric, jobs []mlv1alpha1.TrainingJob) {
	counts := map[string]int{}
	for i := range jobs {
		counts[phaseLabel(string(jobs[i].Status.Phase))]++
	}
	for _, phase := range trainingPhases {
		ch <- prometheus.MustNewConstMetric(c.trainingJobs, prometheus.GaugeValue, float64(counts[phase]), phase)
	}
}

// collectUnseals reports the outcome each server pod's unseal init container
// wrote to its termination message. Pods whose unseal has not finished, or
// failed, have no such series; a failure shows in WeightsVerified instead.
func (c *Collector) collectUnseals(ch chan<- prometheus.Metric, pods []corev1.Pod) {
	for i := range pods {
		p := &pods[i]
		report, ok := unsealReportOf(p)
		if !ok {
			continue
		}
		model := p.Labels[mlv1alpha1.LabelModel]
		ch <- prometheus.MustNewConstMetric(c.unsealSeconds, prometheus.GaugeValue, report.Seconds, p.Namespace, model, p.Name)
		ch <- prometheus.MustNewConstMetric(c.unsealBytes, prometheus.GaugeValue, float64(report.Bytes), p.Namespace, model, p.Name)
	}
}

func phaseLabel(phase string) string {
	if phase == "" {
		return PhaseUnknown
	}
	return phase
}

// unsealReportOf returns the success report the unseal init container of p
// wrote to its termination message (seal.ParseReport), if it finished and
// succeeded.
func unsealReportOf(p *corev1.Pod) (seal.Report, bool) {
	for _, s := range p.Status.InitContainerStatuses {
		if s.Name != builder.UnsealContainerName {
			continue
		}
		t := s.State.Terminated
		if t == nil {
			t = s.LastTerminationState.Terminated
		}
		if t == nil || t.ExitCode != 0 {
			return seal.Report{}, false
		}
		r, err := seal.ParseReport(t.Message)
		if err != nil || !r.OK() {
			return seal.Report{}, false
		}
		return r, true
	}
	return seal.Report{}, false
}
