// Package integration holds tests that run against a real kube-apiserver and
// etcd, started once for the package.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/modelguard/modelguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: stopping control plane:", err)
	}
	os.Exit(code)
}
