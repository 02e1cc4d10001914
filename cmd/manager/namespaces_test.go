package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/controller-runtime/pkg/cache"
)

func TestParseNamespaces(t *testing.T) {
	tests := []struct {
		list    string
		want    map[string]cache.Config
		wantErr string
	}{
		{list: "", want: nil},
		{list: "  ", want: nil},
		{list: "team-a", want: map[string]cache.Config{"team-a": {}}},
		{list: "team-a, team-b", want: map[string]cache.Config{"team-a": {}, "team-b": {}}},
		{list: "team-a,,team-b", wantErr: "empty namespace name"},
		{list: "Team-A", wantErr: `"Team-A" is not a namespace name`},
		{list: "team_a", wantErr: `"team_a" is not a namespace name`},
	}
	for _, tc := range tests {
		t.Run(tc.list, func(t *testing.T) {
			got, err := parseNamespaces(tc.list)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseNamespaces(%q) error = %v, want one containing %q", tc.list, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseNamespaces(%q) = %v", tc.list, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseNamespaces(%q) (-want +got):\n%s", tc.list, diff)
			}
		})
	}
}
