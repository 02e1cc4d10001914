package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

func TestParseTolerations(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []corev1.Toleration
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "blank", in: "  ", want: nil},
		{
			name: "two",
			in:   `[{"key":"gpu-pool","operator":"Exists","effect":"NoSchedule"},{"key":"team","operator":"Equal","value":"ml"}]`,
			want: []corev1.Toleration{
				{Key: "gpu-pool", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
				{Key: "team", Operator: corev1.TolerationOpEqual, Value: "ml"},
			},
		},
		{name: "not a list", in: `{"key":"a"}`, wantErr: "JSON list"},
		{name: "unknown field", in: `[{"kee":"a"}]`, wantErr: "unknown field"},
		{name: "bad operator", in: `[{"key":"a","operator":"In"}]`, wantErr: "[0].operator"},
		{name: "bad effect", in: `[{"key":"a","operator":"Exists","effect":"Never"}]`, wantErr: "[0].effect"},
		{name: "value with Exists", in: `[{"key":"a","operator":"Exists","value":"x"}]`, wantErr: "[0].value"},
		{name: "no key without Exists", in: `[{"operator":"Equal","value":"x"}]`, wantErr: "[0].operator"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTolerations(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("tolerations (-want +got):\n%s", diff)
			}
		})
	}
}
