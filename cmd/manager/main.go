// Command manager runs the ModelGuard controllers.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/controllers"
	"github.com/modelguard/modelguard/internal/certs"
	mgmetrics "github.com/modelguard/modelguard/internal/metrics"
	"github.com/modelguard/modelguard/internal/version"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
}

// leaderElectionID names the manager's leader-election Lease.
const leaderElectionID = "modelguard.ml.modelguard.dev"

// options are the manager's command-line settings, parsed and checked.
type options struct {
	metricsAddr          string
	probeAddr            string
	secureMetrics        bool
	enableLeaderElection bool
	leaderElectionNS     string
	unsealImage          string
	operatorNamespace    string
	watchNamespaces      map[string]cache.Config
	gpuTolerations       []corev1.Toleration
	keyRelease           keyReleaseOptions
	admission            admissionOptions
	showVersion          bool
	zap                  zap.Options
}

// parseOptions defines the manager's flags on fs and parses args (without
// the program name). The manager passes flag.CommandLine, which also holds
// controller-runtime's --kubeconfig.
func parseOptions(fs *flag.FlagSet, args []string) (options, error) {
	var o options
	var watchNamespaces, gpuTolerations string
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "0",
		"Address the metrics endpoint binds to, e.g. :8443 for HTTPS or :8080 for HTTP; 0 disables it.")
	fs.BoolVar(&o.secureMetrics, "metrics-secure", true,
		"Serve metrics over HTTPS behind Kubernetes authentication and authorization.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081",
		"Address the /healthz and /readyz probes bind to.")
	fs.BoolVar(&o.enableLeaderElection, "leader-elect", false,
		"Elect a leader so that only one of several manager replicas reconciles at a time.")
	fs.StringVar(&o.leaderElectionNS, "leader-election-namespace", "",
		"Namespace of the leader-election Lease; defaults to the manager's own namespace.")
	fs.StringVar(&o.unsealImage, "unseal-image", "modelguard:"+version.Version,
		"Image that runs `modelguard unseal` in protected pods: the ModelGuard image, which holds both binaries.")
	fs.StringVar(&o.operatorNamespace, "operator-namespace", os.Getenv(podNamespaceEnv),
		"The operator's own namespace, the only one whose Secrets a ModelKey's spec.provider.secret can name; defaults to $"+podNamespaceEnv+" (downward API), then the in-cluster ServiceAccount namespace.")
	fs.StringVar(&watchNamespaces, "watch-namespaces", "",
		"Comma-separated namespaces to watch; empty watches every namespace. The Helm chart then grants a Role in each instead of a ClusterRole.")
	fs.StringVar(&gpuTolerations, "default-gpu-tolerations", "",
		`Tolerations, as a JSON list, added to every model and training pod that asks for a GPU, e.g. '[{"key":"gpu-pool","operator":"Exists","effect":"NoSchedule"}]'.`)
	o.keyRelease.bindFlags(fs)
	o.admission.bindFlags(fs)
	fs.BoolVar(&o.showVersion, "version", false, "Print the version and exit.")
	o.zap = zap.Options{Development: false}
	o.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.showVersion {
		// --version answers anywhere, e.g. `docker run <image> --version`,
		// without the in-cluster settings the checks below need.
		return o, nil
	}
	var err error
	if o.operatorNamespace == "" {
		o.operatorNamespace = leaseNamespace("")
	}
	if o.watchNamespaces, err = parseNamespaces(watchNamespaces); err != nil {
		return o, fmt.Errorf("--watch-namespaces: %w", err)
	}
	if o.gpuTolerations, err = parseTolerations(gpuTolerations); err != nil {
		return o, fmt.Errorf("--default-gpu-tolerations: %w", err)
	}
	if err := o.keyRelease.validate(o.operatorNamespace); err != nil {
		return o, err
	}
	if err := o.admission.validate(&o.keyRelease); err != nil {
		return o, err
	}
	return o, nil
}

func run() error {
	o, err := parseOptions(flag.CommandLine, os.Args[1:])
	if err != nil {
		return err
	}
	if o.showVersion {
		fmt.Println(version.Version)
		return nil
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))

	restConfig := ctrl.GetConfigOrDie()
	mgr, err := newManager(restConfig, o)
	if err != nil {
		return err
	}
	if err := addRunnables(mgr, restConfig, o); err != nil {
		return err
	}
	ctrl.Log.WithName("setup").Info("Starting manager", "version", version.Version)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	if o.enableLeaderElection {
		cleanUpLease(restConfig, o)
	}
	return nil
}

// newManager builds the controller manager: scheme, the scoped cache,
// metrics and probes, leader election.
func newManager(restConfig *rest.Config, o options) (ctrl.Manager, error) {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(mlv1alpha1.AddToScheme(scheme))

	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.secureMetrics,
		// HTTP/2 is off because of the rapid-reset CVEs (GHSA-qppj-fm5r-hxr3).
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if o.secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   cacheOptions(o),
		Client:                  clientOptions(),
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.enableLeaderElection,
		LeaderElectionID:        leaderElectionID,
		LeaderElectionNamespace: o.leaderElectionNS,
		// The process exits right after the manager stops, so releasing the
		// lease is safe and lets a new leader start without waiting it out.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	return mgr, nil
}

// cacheOptions scope the manager's cache to what the controllers watch, in
// the watched namespaces.
func cacheOptions(o options) cache.Options {
	opts := controllers.CacheOptions()
	if len(o.watchNamespaces) > 0 {
		opts.DefaultNamespaces = o.watchNamespaces
	}
	return opts
}

// clientOptions make the manager's client read Secrets from the API server,
// never through the cache: a Get of one Secret would otherwise start an
// informer that lists and holds every Secret the operator may read.
func clientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: controllers.UncachedObjects()}}
}

// addRunnables registers what the manager runs: the controllers, the
// key-release endpoint and the admission guard with their serving
// certificate, the guard's CA injector, the metrics collector, the probes,
// and the leader-lease owner.
func addRunnables(mgr ctrl.Manager, restConfig *rest.Config, o options) error {
	// The certificate source reads (and the rotator writes) its Secret, and
	// the CA injector its ValidatingWebhookConfiguration, through a client
	// of their own, straight to the API server: the manager caches no
	// Secret, and may read no other configuration.
	var certSource certs.Source
	var direct client.Client
	if o.keyRelease.enabled() {
		var err error
		if direct, err = client.New(restConfig, client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()}); err != nil {
			return fmt.Errorf("creating the serving-certificate client: %w", err)
		}
		// One certificate serves both endpoints on one listener.
		var guardNames []string
		if o.admission.enabled {
			guardNames = o.admission.dnsNames(o.operatorNamespace)
		}
		if certSource, err = o.keyRelease.newCertSource(direct, o.operatorNamespace, guardNames...); err != nil {
			return err
		}
	}
	controllerOpts := controllers.Options{
		UnsealImage:           o.unsealImage,
		DefaultGPUTolerations: o.gpuTolerations,
		OperatorNamespace:     o.operatorNamespace,
		KeyRelease:            o.keyRelease.endpoint(o.operatorNamespace, certSource),
	}
	if err := controllers.SetupWithManager(mgr, controllerOpts); err != nil {
		return fmt.Errorf("setting up controllers: %w", err)
	}
	if certSource != nil {
		handler, err := newKeyReleaseHandler(keyReleaseDeps{
			reader:       mgr.GetAPIReader(),
			tokenReviews: mgr.GetClient(),
			// The verifier compares pods with what the ProtectedModel
			// controller generates, from the same inputs.
			facts:             controllerOpts.ProtectedModelFacts,
			recorder:          mgr.GetEventRecorder("modelguard"),
			operatorNamespace: o.operatorNamespace,
		})
		if err != nil {
			return err
		}
		if o.admission.enabled {
			if handler, err = addAdmissionGuard(mgr, direct, certSource, o.admission, handler); err != nil {
				return err
			}
		}
		if err := addKeyRelease(mgr, certSource, o.keyRelease.bindAddress, handler); err != nil {
			return err
		}
	}
	// The collector reads the manager's cache at scrape time, so the
	// reconcilers make no metrics calls.
	if err := ctrlmetrics.Registry.Register(mgmetrics.NewCollector(mgr.GetCache())); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("adding ready check: %w", err)
	}
	if o.enableLeaderElection && os.Getenv(podNameEnv) != "" && os.Getenv(podUIDEnv) != "" {
		if ns := leaseNamespace(o.leaderElectionNS); ns != "" {
			if err := mgr.Add(&leaseOwnerRunnable{
				leases:  kubernetes.NewForConfigOrDie(restConfig).CoordinationV1().Leases(ns),
				name:    leaderElectionID,
				podName: os.Getenv(podNameEnv), podUID: os.Getenv(podUIDEnv),
			}); err != nil {
				return fmt.Errorf("adding the lease owner: %w", err)
			}
		}
	}
	return nil
}

// addAdmissionGuard adds the CA injector of the guard's configuration to
// mgr and returns the listener's handler: the guard at webhook.Path, key
// release everywhere else. The guard runs on every replica, leader or not.
func addAdmissionGuard(mgr ctrl.Manager, direct client.Client, source certs.Source, a admissionOptions, keyRelease http.Handler) (http.Handler, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	guard, err := a.newAdmissionHandler(ctx, admissionDeps{
		reader:    mgr.GetClient(),
		apiReader: mgr.GetAPIReader(),
		identity:  direct,
		recorder:  mgr.GetEventRecorder("modelguard"),
		log:       ctrl.Log.WithName("admission-guard"),
	})
	if err != nil {
		return nil, fmt.Errorf("admission guard: %w", err)
	}
	if err := mgr.Add(&caInjector{
		c: direct, name: a.configuration, bundle: source.CABundle, ready: source.Ready(),
		interval: caCheckInterval, resync: caResyncInterval, log: ctrl.Log.WithName("admission-guard"),
	}); err != nil {
		return nil, fmt.Errorf("adding the CA injector: %w", err)
	}
	return servingMux(keyRelease, guard), nil
}

// cleanUpLease deletes the leader-election Lease that Start released
// (ReleaseOnCancel), so that uninstalling leaves none behind.
func cleanUpLease(restConfig *rest.Config, o options) {
	ns := leaseNamespace(o.leaderElectionNS)
	if ns == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leases := kubernetes.NewForConfigOrDie(restConfig).CoordinationV1().Leases(ns)
	if err := deleteReleasedLease(ctx, leases, leaderElectionID); err != nil {
		ctrl.Log.WithName("setup").Error(err, "Leaving the leader-election Lease behind")
	}
}
