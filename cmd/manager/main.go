// Command manager runs the ModelGuard controllers.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/controllers"
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

func run() error {
	var (
		metricsAddr          string
		probeAddr            string
		secureMetrics        bool
		enableLeaderElection bool
		leaderElectionNS     string
		unsealImage          string
		watchNamespaces      string
		gpuTolerations       string
		showVersion          bool
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0",
		"Address the metrics endpoint binds to, e.g. :8443 for HTTPS or :8080 for HTTP; 0 disables it.")
	flag.BoolVar(&secureMetrics, "metrics-secure", true,
		"Serve metrics over HTTPS behind Kubernetes authentication and authorization.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081",
		"Address the /healthz and /readyz probes bind to.")
	flag.BoolVar(&enableLeaderElection, "leader-elect", false,
		"Elect a leader so that only one of several manager replicas reconciles at a time.")
	flag.StringVar(&leaderElectionNS, "leader-election-namespace", "",
		"Namespace of the leader-election Lease; defaults to the manager's own namespace.")
	flag.StringVar(&unsealImage, "unseal-image", "modelguard:"+version.Version,
		"Image that runs `modelguard unseal` in protected pods: the ModelGuard image, which holds both binaries.")
	flag.StringVar(&watchNamespaces, "watch-namespaces", "",
		"Comma-separated namespaces to watch; empty watches every namespace. The Helm chart then grants a Role in each instead of a ClusterRole.")
	flag.StringVar(&gpuTolerations, "default-gpu-tolerations", "",
		`Tolerations, as a JSON list, added to every model and training pod that asks for a GPU, e.g. '[{"key":"gpu-pool","operator":"Exists","effect":"NoSchedule"}]'.`)
	flag.BoolVar(&showVersion, "version", false, "Print the version and exit.")
	zapOpts := zap.Options{Development: false}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	if showVersion {
		fmt.Println(version.Version)
		return nil
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(mlv1alpha1.AddToScheme(scheme))

	metricsOpts := metricsserver.Options{
		BindAddress:   metricsAddr,
		SecureServing: secureMetrics,
		// HTTP/2 is off because of the rapid-reset CVEs (GHSA-qppj-fm5r-hxr3).
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	cacheOpts := controllers.CacheOptions()
	namespaces, err := parseNamespaces(watchNamespaces)
	if err != nil {
		return fmt.Errorf("--watch-namespaces: %w", err)
	}
	if len(namespaces) > 0 {
		cacheOpts.DefaultNamespaces = namespaces
	}

	restConfig := ctrl.GetConfigOrDie()
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   cacheOpts,
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          enableLeaderElection,
		LeaderElectionID:        leaderElectionID,
		LeaderElectionNamespace: leaderElectionNS,
		// The process exits right after the manager stops, so releasing the
		// lease is safe and lets a new leader start without waiting it out.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	defaultGPUTolerations, err := parseTolerations(gpuTolerations)
	if err != nil {
		return fmt.Errorf("--default-gpu-tolerations: %w", err)
	}
	if err := controllers.SetupWithManager(mgr, controllers.Options{
		UnsealImage:           unsealImage,
		DefaultGPUTolerations: defaultGPUTolerations,
	}); err != nil {
		return fmt.Errorf("setting up controllers: %w", err)
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
	if enableLeaderElection && os.Getenv(podNameEnv) != "" && os.Getenv(podUIDEnv) != "" {
		if ns := leaseNamespace(leaderElectionNS); ns != "" {
			if err := mgr.Add(&leaseOwnerRunnable{
				leases:  kubernetes.NewForConfigOrDie(restConfig).CoordinationV1().Leases(ns),
				name:    leaderElectionID,
				podName: os.Getenv(podNameEnv), podUID: os.Getenv(podUIDEnv),
			}); err != nil {
				return fmt.Errorf("adding the lease owner: %w", err)
			}
		}
	}
	ctrl.Log.WithName("setup").Info("Starting manager", "version", version.Version)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	if enableLeaderElection {
		// Start returns after the lease was released (ReleaseOnCancel).
		if ns := leaseNamespace(leaderElectionNS); ns != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			leases := kubernetes.NewForConfigOrDie(restConfig).CoordinationV1().Leases(ns)
			if err := deleteReleasedLease(ctx, leases, leaderElectionID); err != nil {
				ctrl.Log.WithName("setup").Error(err, "Leaving the leader-election Lease behind")
			}
		}
	}
	return nil
}
