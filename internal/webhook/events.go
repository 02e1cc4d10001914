package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/util/flowcontrol"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

// BreakGlassTotal counts the sessions (exec, attach, port-forward, proxy)
// the guard let into protected pods, by the workload's namespace and name
// and the subresource.
var BreakGlassTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "modelguard_break_glass_total",
	Help: "Sessions into protected pods that the admission guard allowed (break-glass members and cluster administrators), by namespace, model and subresource.",
}, []string{"namespace", "model", "subresource"})

// DenialsTotal counts the requests the guard denied, by rule.
var DenialsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "modelguard_admission_denials_total",
	Help: "Requests the admission guard denied, by rule (exec, look-alike-pod, fail-closed, ...).",
}, []string{"rule"})

func init() {
	ctrlmetrics.Registry.MustRegister(BreakGlassTotal, DenialsTotal)
}

// maxEventNote is the longest note events.k8s.io/v1 accepts.
const maxEventNote = 1024

// eventLimiter spaces out the denial Events of each workload and rule. The
// events library already folds repeats of one action on one object into a
// series, but a tenant can vary the object (a new pod name per attempt); one
// Event per attempt would then flood the namespace. Each rule has its own
// budget, so that a flood of one kind of attempt does not hide another.
// Denials over the limit are still counted and logged at V(1). Keys are
// workload UIDs and rules, so the map grows only with real workloads.
type eventLimiter struct {
	mu       sync.Mutex
	limiters map[limiterKey]flowcontrol.RateLimiter
}

type limiterKey struct {
	workload types.UID
	rule     string
}

const (
	// A burst of denialBurst Events, then one every 10 seconds.
	denialBurst = 10
	denialQPS   = 0.1
)

func newEventLimiter() *eventLimiter {
	return &eventLimiter{limiters: map[limiterKey]flowcontrol.RateLimiter{}}
}

func (l *eventLimiter) allow(uid types.UID, rule string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := limiterKey{uid, rule}
	rl, ok := l.limiters[key]
	if !ok {
		rl = flowcontrol.NewTokenBucketRateLimiter(denialQPS, denialBurst)
		l.limiters[key] = rl
	}
	return rl.TryAccept()
}

// connectOptions are the fields of PodExecOptions, PodAttachOptions,
// PodPortForwardOptions and the proxy options that a session's Event names.
type connectOptions struct {
	Container string   `json:"container"`
	Command   []string `json:"command"`
	Ports     []int32  `json:"ports"`
	Path      string   `json:"path"`
}

// record counts a decision and records it as an Event on the workload:
// every allowed session, and denials up to the limiter's rate. Dry runs
// leave nothing (the configuration declares sideEffects NoneOnDryRun).
func (h *handler) record(ctx context.Context, req *admissionv1.AdmissionRequest, d policy.Decision) {
	if req.DryRun != nil && *req.DryRun {
		return
	}
	if d.Allowed && d.Session == "" {
		return
	}
	user, groups := req.UserInfo.Username, req.UserInfo.Groups
	if !d.Allowed {
		DenialsTotal.WithLabelValues(d.Rule).Inc()
	} else {
		BreakGlassTotal.WithLabelValues(req.Namespace, d.Workload.Name, req.SubResource).Inc()
	}
	// The Event needs the workload's UID; the cache has it.
	_, obj, err := h.withAccess(ctx, d.Workload)
	if err != nil {
		h.log.Error(err, "No Event for an admission decision", "workload", d.Workload.String())
	}

	if d.Allowed {
		opts := sessionOptions(req)
		_, pod, _, _ := utilnet.SplitSchemeNamePort(req.Name)
		note := fmt.Sprintf("Break-glass %s into pod %s/%s%s by %s (groups %s), %s%s",
			sessionVerb(req.SubResource), req.Namespace, pod, containerPhrase(opts.Container), user, strings.Join(groups, ", "), d.Session, sessionDetail(req.SubResource, opts))
		h.log.Info("Session into a protected pod allowed", "workload", d.Workload.String(), "pod", klogRef(req.Namespace, pod),
			"subresource", req.SubResource, "user", user, "groups", groups, "grounds", d.Session,
			"container", opts.Container, "command", redactCommand(opts.Command), "ports", opts.Ports)
		if obj != nil {
			// The events library folds Events with the same object,
			// related object, reason and action into a series that keeps
			// the first note only. Every session must keep its own user
			// and command, so each refers to its own request: the
			// options object it admitted, named by the pod and the
			// admission request's UID.
			related := &corev1.ObjectReference{APIVersion: "v1", Kind: req.Kind.Kind, Namespace: req.Namespace, Name: pod, UID: req.UID}
			h.recorder.Eventf(obj, related, corev1.EventTypeNormal, mlv1alpha1.ReasonBreakGlass, action(req), "%s", truncate(note))
		}
		return
	}

	if obj == nil || !h.limiter.allow(obj.GetUID(), d.Rule) {
		h.log.V(1).Info("Request denied", "rule", d.Rule, "request", describe(req), "user", user, "workload", d.Workload.String())
		return
	}
	h.log.Info("Request denied", "rule", d.Rule, "request", describe(req), "user", user, "groups", groups, "workload", d.Workload.String())
	note := fmt.Sprintf("Denied to %s (groups %s): %s", user, strings.Join(groups, ", "), d.Message)
	// A nil *ObjectReference in the interface would be a reference to
	// nothing rather than no reference.
	var related runtime.Object
	if ref := relatedObject(req); ref != nil {
		related = ref
	}
	h.recorder.Eventf(obj, related, corev1.EventTypeWarning, mlv1alpha1.ReasonAccessDenied, action(req), "%s", truncate(note))
}

func klogRef(ns, name string) string { return ns + "/" + name }

func sessionOptions(req *admissionv1.AdmissionRequest) connectOptions {
	var o connectOptions
	if len(req.Object.Raw) > 0 {
		// Best effort: the Event names what it can.
		_ = json.Unmarshal(req.Object.Raw, &o)
	}
	return o
}

func sessionVerb(subresource string) string {
	switch subresource {
	case policy.SubresourcePortForward:
		return "port-forward"
	case policy.SubresourceProxy:
		return "proxy"
	default:
		return subresource
	}
}

func containerPhrase(c string) string {
	if c == "" {
		return " (default container)"
	}
	return " container " + c
}

func sessionDetail(subresource string, o connectOptions) string {
	switch subresource {
	case policy.SubresourceExec:
		return ": command " + redactCommand(o.Command)
	case policy.SubresourcePortForward:
		return fmt.Sprintf(": ports %v", o.Ports)
	case policy.SubresourceProxy:
		return ": path " + strconv.Quote(o.Path)
	}
	return ""
}

// action is the Event's action: what the request tried.
func action(req *admissionv1.AdmissionRequest) string {
	switch req.SubResource {
	case policy.SubresourceExec:
		return "Exec"
	case policy.SubresourceAttach:
		return "Attach"
	case policy.SubresourcePortForward:
		return "PortForward"
	case policy.SubresourceProxy:
		return "Proxy"
	case "ephemeralcontainers":
		return "AddEphemeralContainer"
	case "token":
		return "CreateToken"
	case "eviction":
		return "Evict"
	case "scale":
		return "Scale"
	}
	op := strings.ToLower(string(req.Operation))
	if op == "" {
		return "Request"
	}
	return strings.ToUpper(op[:1]) + op[1:]
}

// kindOf is the kind of the object a subresource request is about.
var kindOf = map[string]string{
	"pods": "Pod", "services": "Service", "serviceaccounts": "ServiceAccount", "persistentvolumeclaims": "PersistentVolumeClaim",
	"deployments": "Deployment", "replicasets": "ReplicaSet", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet",
	"jobs": "Job", "cronjobs": "CronJob", "networkpolicies": "NetworkPolicy",
}

// relatedObject is the object a denied request was about, so that repeated
// attempts on one object form one Event series. Nil for a create without a
// name yet.
func relatedObject(req *admissionv1.AdmissionRequest) *corev1.ObjectReference {
	_, name, _, _ := utilnet.SplitSchemeNamePort(req.Name)
	if name == "" {
		return nil
	}
	apiVersion := req.Resource.Version
	if req.Resource.Group != "" {
		apiVersion = req.Resource.Group + "/" + apiVersion
	}
	kind := req.Kind.Kind
	if req.SubResource != "" || req.Operation == admissionv1.Connect {
		kind = kindOf[req.Resource.Resource]
	}
	return &corev1.ObjectReference{APIVersion: apiVersion, Kind: kind, Namespace: req.Namespace, Name: name}
}

func truncate(note string) string {
	if len(note) > maxEventNote {
		return note[:maxEventNote-3] + "..."
	}
	return note
}

// Credentials that turn up in commands: bearer tokens, JWTs (ServiceAccount
// tokens among them) and the values of flags named like secrets.
var (
	bearerPattern = regexp.MustCompile(`(?i)(bearer\s+)\S+`)
	jwtPattern    = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`)
	flagPattern   = regexp.MustCompile(`(?i)(-{1,2}[a-z-]*(token|password|passwd|secret|key)[a-z-]*[=\s]+)\S+`)
)

// maxCommandArg bounds each argument of a recorded command.
const maxCommandArg = 200

// redactCommand renders a session's command for Events and logs without
// credentials that may appear in it.
func redactCommand(command []string) string {
	if len(command) == 0 {
		return "(none: the container's own)"
	}
	out := make([]string, len(command))
	for i, arg := range command {
		arg = bearerPattern.ReplaceAllString(arg, "${1}[redacted]")
		arg = jwtPattern.ReplaceAllString(arg, "[redacted]")
		arg = flagPattern.ReplaceAllString(arg, "${1}[redacted]")
		if len(arg) > maxCommandArg {
			arg = arg[:maxCommandArg] + "..."
		}
		out[i] = strconv.Quote(arg)
	}
	// A secret passed as the argument after a flag of its own.
	for i := 1; i < len(command); i++ {
		if flagPattern.MatchString(command[i-1]+" x") && !strings.Contains(command[i-1], "=") {
			out[i] = strconv.Quote("[redacted]")
		}
	}
	return "[" + strings.Join(out, " ") + "]"
}
