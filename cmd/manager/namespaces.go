package main

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/cache"
)

// parseNamespaces turns the --watch-namespaces list into the cache's
// DefaultNamespaces. An empty list means every namespace (nil).
func parseNamespaces(list string) (map[string]cache.Config, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	out := map[string]cache.Config{}
	for _, ns := range strings.Split(list, ",") {
		ns = strings.TrimSpace(ns)
		if ns == "" {
			return nil, fmt.Errorf("%q has an empty namespace name", list)
		}
		if problems := validation.IsDNS1123Label(ns); len(problems) > 0 {
			return nil, fmt.Errorf("%q is not a namespace name: %s", ns, strings.Join(problems, "; "))
		}
		out[ns] = cache.Config{}
	}
	return out, nil
}
