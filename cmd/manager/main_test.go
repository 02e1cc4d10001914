package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(*options)
		wantErr string
	}{{
		name: "defaults",
		env:  map[string]string{podNamespaceEnv: "modelguard-system"},
		want: func(o *options) { o.operatorNamespace = "modelguard-system" },
	}, {
		name: "everything set",
		args: []string{"--metrics-bind-address=:8443", "--metrics-secure=false", "--leader-elect",
			"--leader-election-namespace=modelguard-system", "--unseal-image=registry.example.com/mg:v1",
			"--watch-namespaces=models,team-a", `--default-gpu-tolerations=[{"key":"gpu-pool","operator":"Exists"}]`,
			"--operator-namespace=mg-ops", "--key-release-bind-address=127.0.0.1:9444", "--key-release-service=mg-key-release",
			"--serving-cert-secret=mg-serving-cert", "--ca-configmap=mg-ca"},
		want: func(o *options) {
			o.metricsAddr, o.secureMetrics, o.enableLeaderElection = ":8443", false, true
			o.leaderElectionNS, o.unsealImage = "modelguard-system", "registry.example.com/mg:v1"
			o.gpuTolerations = []corev1.Toleration{{Key: "gpu-pool", Operator: corev1.TolerationOpExists}}
			o.operatorNamespace = "mg-ops"
			o.keyRelease = keyReleaseOptions{bindAddress: "127.0.0.1:9444", service: "mg-key-release",
				servingCertSecret: "mg-serving-cert", caConfigMap: "mg-ca"}
		},
	}, {
		name: "operator namespace from the downward API",
		env:  map[string]string{podNamespaceEnv: "modelguard-system"},
		want: func(o *options) { o.operatorNamespace = "modelguard-system" },
	}, {
		name: "operator namespace flag wins",
		args: []string{"--operator-namespace=mg-ops"},
		env:  map[string]string{podNamespaceEnv: "modelguard-system"},
		want: func(o *options) { o.operatorNamespace = "mg-ops" },
	}, {
		name:    "key release needs the operator's namespace",
		env:     map[string]string{podNamespaceEnv: ""},
		wantErr: "--operator-namespace",
	}, {
		// --version answers outside a cluster too (docker run <image> --version).
		name: "version needs no in-cluster settings",
		args: []string{"--version"},
		env:  map[string]string{podNamespaceEnv: ""},
		want: func(o *options) { o.showVersion = true },
	}, {
		name: "key release disabled needs no namespace",
		args: []string{"--key-release-bind-address=0", "--admission-guard=false"},
		env:  map[string]string{podNamespaceEnv: ""},
		want: func(o *options) { o.keyRelease.bindAddress, o.admission.enabled = "0", false },
	}, {
		name:    "the admission guard needs the key-release listener",
		args:    []string{"--key-release-bind-address=0"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--admission-guard",
	}, {
		name: "admission guard flags",
		args: []string{"--webhook-configuration=mg-admission-guard", "--webhook-service=mg-webhook",
			"--admission-trusted-controllers= system:serviceaccount:kueue-system:kueue-controller-manager, batch-bot ,"},
		env: map[string]string{podNamespaceEnv: "modelguard-system"},
		want: func(o *options) {
			o.operatorNamespace = "modelguard-system"
			o.admission.configuration, o.admission.service = "mg-admission-guard", "mg-webhook"
			o.admission.trustedControllers = userList{"system:serviceaccount:kueue-system:kueue-controller-manager", "batch-bot"}
		},
	}, {
		name: "no trusted controllers",
		args: []string{"--admission-trusted-controllers="},
		env:  map[string]string{podNamespaceEnv: "modelguard-system"},
		want: func(o *options) { o.operatorNamespace, o.admission.trustedControllers = "modelguard-system", nil },
	}, {
		name: "the admission guard off ignores its names",
		args: []string{"--admission-guard=false", "--webhook-service=Not_A_Service"},
		env:  map[string]string{podNamespaceEnv: "modelguard-system"},
		want: func(o *options) {
			o.operatorNamespace, o.admission.enabled, o.admission.service = "modelguard-system", false, "Not_A_Service"
		},
	}, {
		name:    "a trusted ServiceAccount that names no ServiceAccount names the flag",
		args:    []string{"--admission-trusted-controllers=system:serviceaccount:kueue-controller-manager"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "-admission-trusted-controllers",
	}, {
		name:    "a trusted user with a space names the flag",
		args:    []string{"--admission-trusted-controllers=kueue controller"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "-admission-trusted-controllers",
	}, {
		name:    "a configuration name that is not a name names the flag",
		args:    []string{"--webhook-configuration=Admission Guard"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--webhook-configuration",
	}, {
		name:    "a webhook Service name that is not a DNS label names the flag",
		args:    []string{"--webhook-service=mg.webhook"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--webhook-service",
	}, {
		name:    "the webhook needs a Service of its own",
		args:    []string{"--webhook-service=mg-key-release", "--key-release-service=mg-key-release"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--webhook-service",
	}, {
		name:    "a key-release address without a port names the flag",
		args:    []string{"--key-release-bind-address=8444"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--key-release-bind-address",
	}, {
		name:    "a Service name that is not a DNS label names the flag",
		args:    []string{"--key-release-service=Key_Release"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--key-release-service",
	}, {
		name:    "a bad Secret name names the flag",
		args:    []string{"--serving-cert-secret=-cert"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--serving-cert-secret",
	}, {
		name:    "a bad ConfigMap name names the flag",
		args:    []string{"--ca-configmap=CA"},
		env:     map[string]string{podNamespaceEnv: "modelguard-system"},
		wantErr: "--ca-configmap",
	}, {
		name:    "bad tolerations name the flag",
		args:    []string{"--default-gpu-tolerations=not json"},
		wantErr: "--default-gpu-tolerations",
	}, {
		name:    "bad namespace names the flag",
		args:    []string{"--watch-namespaces=Not_A_Namespace"},
		wantErr: "--watch-namespaces",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("manager", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			got, err := parseOptions(fs, tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := options{metricsAddr: "0", probeAddr: ":8081", secureMetrics: true, unsealImage: got.unsealImage,
				keyRelease: keyReleaseOptions{bindAddress: ":8444", service: "modelguard-key-release",
					servingCertSecret: "modelguard-serving-cert", caConfigMap: "modelguard-ca"},
				admission: admissionOptions{enabled: true, configuration: "modelguard-admission-guard", service: "modelguard-webhook",
					trustedControllers: userList{"system:serviceaccount:kueue-system:kueue-controller-manager"}}}
			tc.want(&want)
			got.zap, got.watchNamespaces = want.zap, nil // checked by their own tests
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(options{}, keyReleaseOptions{}, admissionOptions{})); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
		})
	}
}
