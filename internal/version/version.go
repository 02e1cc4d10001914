// Package version holds the build version, stamped by the Makefile through
// -ldflags "-X github.com/modelguard/modelguard/internal/version.Version=…".
package version

// Version is the ModelGuard release; "dev" when built without ldflags.
var Version = "dev"
