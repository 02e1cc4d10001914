//go:build tools

// Package tools pins the local cluster's add-ons that are built from the Go
// module proxy: CoreDNS (the cluster DNS) here, and beside it the
// local-volume-provisioner, our program on sig-storage-lib-external-provisioner.
// Kueue pins older Kubernetes libraries and has a module of its own,
// hack/tools/kueue.
package tools

import (
	_ "github.com/coredns/coredns"
)
