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
		want: func(o *options) {},
	}, {
		name: "everything set",
		args: []string{"--metrics-bind-address=:8443", "--metrics-secure=false", "--leader-elect",
			"--leader-election-namespace=modelguard-system", "--unseal-image=registry.example.com/mg:v1",
			"--watch-namespaces=models,team-a", `--default-gpu-tolerations=[{"key":"gpu-pool","operator":"Exists"}]`},
		want: func(o *options) {
			o.metricsAddr, o.secureMetrics, o.enableLeaderElection = ":8443", false, true
			o.leaderElectionNS, o.unsealImage = "modelguard-system", "registry.example.com/mg:v1"
			o.gpuTolerations = []corev1.Toleration{{Key: "gpu-pool", Operator: corev1.TolerationOpExists}}
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
			want := options{metricsAddr: "0", probeAddr: ":8081", secureMetrics: true, unsealImage: got.unsealImage}
			tc.want(&want)
			got.zap, got.watchNamespaces = want.zap, nil // checked by their own tests
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(options{})); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
		})
	}
}
