// Command demo shows ModelGuard protecting a model on a real single-node
// Kubernetes (hack/local-cluster) on this machine: it brings the cluster up,
// deploys the operator in-cluster, applies config/samples, seals a small
// generated model under a ModelKey whose KEK lives in the operator's own
// namespace, serves it as a ProtectedModel on a fake GPU (the operator
// releases the data key only to the model's verified unseal container, and
// an Event on the model says so), and proves with real connections from pods
// that an allowed client gets an answer and any other pod gets nothing.
//
// It keeps running until interrupted, so that a person can explore with
// kubectl; with DEMO_EXIT=1 it exits as soon as it has shown everything.
// Either way it tears the cluster down on the way out.
//
// DEMO_MODE=control-plane runs the earlier plumbing demo instead (no root
// needed, no pods): see controlplane.go.
package main

import (
	"fmt"
	"os"
)

func main() {
	run := runCluster
	if os.Getenv("DEMO_MODE") == "control-plane" {
		run = runControlPlane
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
