package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/modelguard/modelguard/internal/webhook"
)

// Defaults of the admission guard's flags: the names the Helm chart and
// kustomize give the objects for a release called modelguard.
const (
	defaultWebhookConfiguration = "modelguard-admission-guard"
	defaultWebhookService       = "modelguard-webhook"
	// kueueControllerUser is the user Kueue's controller runs as in its
	// default installation: it suspends and resumes the Jobs it admits.
	kueueControllerUser = "system:serviceaccount:kueue-system:kueue-controller-manager"
)

// admissionOptions are the flags of the admission guard.
type admissionOptions struct {
	// enabled serves the guard and keeps the configuration's CA bundle.
	enabled bool
	// configuration is the ValidatingWebhookConfiguration whose caBundle
	// the manager keeps current.
	configuration string
	// service is the Service, in the operator's namespace, through which
	// the API server calls the guard; the serving certificate names it.
	service string
	// trustedControllers are user names the guard does not treat as
	// tenants, besides the operator's and Kubernetes' own.
	trustedControllers userList
}

// userList is a comma-separated list of user names, as a flag.
type userList []string

func (l *userList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

// Set replaces the list; an empty value makes it empty.
func (l *userList) Set(v string) error {
	var users []string
	for _, u := range strings.Split(v, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if err := checkUserName(u); err != nil {
			return err
		}
		if !slices.Contains(users, u) {
			users = append(users, u)
		}
	}
	*l = users
	return nil
}

// serviceAccountPrefix starts the user name of every ServiceAccount.
const serviceAccountPrefix = "system:serviceaccount:"

// checkUserName catches the typos that would trust nobody: a user name with
// spaces, or a ServiceAccount user name that names no ServiceAccount.
func checkUserName(u string) error {
	if strings.ContainsAny(u, " \t\n") {
		return fmt.Errorf("%q is not a user name: it holds white space", u)
	}
	if rest, ok := strings.CutPrefix(u, serviceAccountPrefix); ok {
		ns, name, found := strings.Cut(rest, ":")
		if !found || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
			return fmt.Errorf("%q is not a ServiceAccount user name such as %s", u, kueueControllerUser)
		}
	}
	return nil
}

func (a *admissionOptions) bindFlags(fs *flag.FlagSet) {
	fs.BoolVar(&a.enabled, "admission-guard", true,
		"Serve the admission guard, ModelGuard's validating webhook, at "+webhook.Path+" on the key-release listener of every replica, "+
			"and keep the CA bundle of --webhook-configuration current. Turn it off only in tests: the configuration fails closed, "+
			"so without the guard every request it covers in a protected namespace is refused.")
	fs.StringVar(&a.configuration, "webhook-configuration", defaultWebhookConfiguration,
		"Name of the ValidatingWebhookConfiguration of the admission guard; the manager writes the serving certificate's CA bundle "+
			"into its webhooks' clientConfig.caBundle at start and whenever the bundle changes.")
	fs.StringVar(&a.service, "webhook-service", defaultWebhookService,
		"Name of the Service, in the operator's namespace, through which the API server calls the admission guard; "+
			"the serving certificate is issued for it as well as for --key-release-service.")
	a.trustedControllers = userList{kueueControllerUser}
	fs.Var(&a.trustedControllers, "admission-trusted-controllers",
		"Comma-separated user names of controllers, besides Kubernetes' own, that the admission guard does not treat as tenants, "+
			"such as Kueue, which suspends and resumes the Jobs it admits. A trusted controller may do whatever the guard lets the operator do: "+
			"create, change and delete the objects ModelGuard manages in protected namespaces, set or remove ModelGuard's labels, "+
			"and exec, attach or port-forward into protected pods (each session recorded as an Event on the model); "+
			"only ServiceAccount tokens stay reserved to nodes. Whoever can act as such a user gets all of that, "+
			"so name only controllers you trust as much as the operator. Empty trusts none.")
}

// validate checks the flags; keyRelease is where the guard is served.
func (a *admissionOptions) validate(keyRelease *keyReleaseOptions) error {
	if !a.enabled {
		return nil
	}
	if problems := validation.IsDNS1123Subdomain(a.configuration); len(problems) > 0 {
		return fmt.Errorf("--webhook-configuration %q is not a ValidatingWebhookConfiguration name: %s", a.configuration, strings.Join(problems, "; "))
	}
	if problems := validation.IsDNS1035Label(a.service); len(problems) > 0 {
		return fmt.Errorf("--webhook-service %q is not a Service name: %s", a.service, strings.Join(problems, "; "))
	}
	if a.service == keyRelease.service {
		return fmt.Errorf("--webhook-service %q is also --key-release-service: the guard needs a Service of its own, which the ValidatingWebhookConfiguration names", a.service)
	}
	if !keyRelease.enabled() {
		return errors.New("--admission-guard is served on the key-release listener, which --key-release-bind-address=0 disables: set an address, or --admission-guard=false (tests only)")
	}
	return nil
}

// dnsNames are the webhook Service's names, for the serving certificate.
// The API server calls a Service reference by its .svc name.
func (a *admissionOptions) dnsNames(namespace string) []string {
	return []string{
		fmt.Sprintf("%s.%s.svc", a.service, namespace),
		fmt.Sprintf("%s.%s.svc.cluster.local", a.service, namespace),
	}
}

// operatorUser asks the API server who the manager is (a SelfSubjectReview),
// which is the user name admission requests carry for the operator's own
// writes. The guard recognises the operator by its ServiceAccount.
func operatorUser(ctx context.Context, c client.Writer) (string, error) {
	review := &authenticationv1.SelfSubjectReview{}
	if err := c.Create(ctx, review); err != nil {
		return "", fmt.Errorf("asking the API server who the manager is (SelfSubjectReview): %w", err)
	}
	user := review.Status.UserInfo.Username
	if !strings.HasPrefix(user, serviceAccountPrefix) {
		return "", fmt.Errorf("the admission guard recognises the operator's own writes by its ServiceAccount, but the manager runs as user %q: "+
			"run it as a ServiceAccount, or pass --admission-guard=false (tests only)", user)
	}
	return user, nil
}

// admissionDeps are what the guard needs from the manager.
type admissionDeps struct {
	// reader reads through the manager's cache, apiReader around it.
	reader, apiReader client.Reader
	// identity creates the SelfSubjectReview that names the operator.
	identity client.Writer
	recorder events.EventRecorder
	log      logr.Logger
}

// newAdmissionHandler builds the guard's handler, for the operator's user
// as the API server knows it.
func (a *admissionOptions) newAdmissionHandler(ctx context.Context, d admissionDeps) (http.Handler, error) {
	user, err := operatorUser(ctx, d.identity)
	if err != nil {
		return nil, err
	}
	h, err := webhook.NewHandler(webhook.Options{
		Reader:                 d.reader,
		APIReader:              d.apiReader,
		Recorder:               d.recorder,
		OperatorServiceAccount: user,
		TrustedControllers:     a.trustedControllers,
		Log:                    d.log,
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("Admission guard set up", "operator", user, "trustedControllers", []string(a.trustedControllers), "path", webhook.Path)
	return h, nil
}

// servingMux serves the admission guard at webhook.Path and everything
// else with the key-release handler, on the one listener and certificate.
func servingMux(keyRelease, guard http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(webhook.Path, guard)
	mux.Handle("/", keyRelease)
	return mux
}

// Intervals of the CA injector.
const (
	// caCheckInterval is how often the certificate source's bundle is
	// compared with the one last injected: a renewed CA reaches the API
	// server within it.
	caCheckInterval = 10 * time.Second
	// caResyncInterval is how often the configuration is read back even
	// though the bundle did not change, to repair a caBundle that an
	// upgrade or a person reset.
	caResyncInterval = time.Minute
)

// caInjector keeps the caBundle of every webhook of a
// ValidatingWebhookConfiguration equal to the serving certificate's CA
// bundle. Every replica runs one: each reads the configuration first and
// writes only a bundle that differs, with optimistic concurrency, so
// replicas that agree write nothing and a conflict is retried at the next
// check.
type caInjector struct {
	// c reads and writes the configuration; uncached, since the manager
	// may read this one object only.
	c        client.Client
	name     string
	bundle   func() []byte
	ready    <-chan struct{}
	interval time.Duration
	resync   time.Duration
	log      logr.Logger
}

var (
	_ manager.Runnable               = (*caInjector)(nil)
	_ manager.LeaderElectionRunnable = (*caInjector)(nil)
)

// NeedLeaderElection is false: every replica serves the certificate, and
// the configuration must trust it during a leader change too.
func (i *caInjector) NeedLeaderElection() bool { return false }

// Start waits for the first certificate, injects its bundle, and then
// checks every interval, until ctx ends. Failures are logged when they
// change and retried at the next check; they never stop the manager.
func (i *caInjector) Start(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-i.ready:
	}
	ticker := time.NewTicker(i.interval)
	defer ticker.Stop()
	var injected []byte
	var synced time.Time
	var lastProblem string
	for {
		bundle := i.bundle()
		if len(bundle) > 0 && (!bytes.Equal(bundle, injected) || time.Since(synced) >= i.resync) {
			changed, err := i.inject(ctx, bundle)
			switch {
			case err != nil && ctx.Err() != nil:
				return nil
			case err != nil:
				injected = nil
				if problem := err.Error(); problem != lastProblem {
					i.log.Error(err, "Cannot inject the CA bundle; retrying", "validatingWebhookConfiguration", klog.KRef("", i.name))
					lastProblem = problem
				}
			default:
				injected, synced, lastProblem = bundle, time.Now(), ""
				if changed {
					i.log.Info("Injected the CA bundle", "validatingWebhookConfiguration", klog.KRef("", i.name))
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// inject writes bundle into the configuration's webhooks unless every one
// holds it already; changed says whether it wrote.
func (i *caInjector) inject(ctx context.Context, bundle []byte) (changed bool, err error) {
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := i.c.Get(ctx, client.ObjectKey{Name: i.name}, vwc); err != nil {
		return false, fmt.Errorf("reading ValidatingWebhookConfiguration %s: %w", i.name, err)
	}
	if !setCABundle(vwc, bundle) {
		return false, nil
	}
	if err := i.c.Update(ctx, vwc); err != nil {
		return false, fmt.Errorf("writing the CA bundle into ValidatingWebhookConfiguration %s: %w", i.name, err)
	}
	return true, nil
}

// setCABundle sets every webhook's clientConfig.caBundle to bundle and
// reports whether any differed.
func setCABundle(vwc *admissionregistrationv1.ValidatingWebhookConfiguration, bundle []byte) bool {
	changed := false
	for j := range vwc.Webhooks {
		if !bytes.Equal(vwc.Webhooks[j].ClientConfig.CABundle, bundle) {
			vwc.Webhooks[j].ClientConfig.CABundle = bytes.Clone(bundle)
			changed = true
		}
	}
	return changed
}
