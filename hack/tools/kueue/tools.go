//go:build tools

// Package tools pins Kueue, which the local cluster runs in-cluster on
// demand (`local-cluster kueue`). It has a module of its own because it pins
// older Kubernetes libraries than CoreDNS and the provisioner.
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
