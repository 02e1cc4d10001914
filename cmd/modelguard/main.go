// Command modelguard seals model weights into encrypted bundles and unseals
// them into memory. It is also the unseal init container of a protected pod.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/version"
)

func main() {
	// SIGTERM is how the kubelet stops an init container: cancel, so that
	// unseal removes the plaintext it wrote before exiting.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// cli holds what the commands need from the process, so that tests run them
// in-process and capture everything they print.
type cli struct {
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// keyReleaseBackoff is the key-release client's retry schedule; zero
	// means its default. Tests shorten it.
	keyReleaseBackoff keyrelease.Backoff
}

// usageError marks a mistake in the command line, which gets exit code 2 and
// a pointer to --help.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return (&cli{stdout: stdout, stderr: stderr, getenv: getenv}).run(ctx, args)
}

func (c *cli) run(ctx context.Context, args []string) int {
	root := c.rootCommand()
	root.SetArgs(args)
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(c.stderr, "%s: %v\n", cmd.CommandPath(), err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(c.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	}
	return exitFail
}

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "modelguard",
		Short: "Seal model weights into encrypted bundles, and unseal them into memory",
		Long: strings.TrimSpace(`
modelguard seals model weights into an encrypted bundle (AES-256-GCM in
authenticated chunks, under a per-bundle data key wrapped by your
key-encryption key), and unseals bundles into a memory-backed directory. It is
also the unseal init container of a ModelGuard-protected pod.

The format is specified in docs/sealed-format.md.`),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return nil
		},
		// Without a subcommand, show help rather than doing nothing.
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(c.versionCommand(), c.sealCommand(), c.unsealCommand(), c.verifyCommand(), c.inspectCommand())
	return root
}

func (c *cli) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the modelguard version",
		Args:  exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(c.stdout, version.Version)
			return nil
		},
	}
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if n == 0 && len(args) > 0 {
			return usagef("takes no arguments, got %d", len(args))
		}
		if len(args) != n {
			return usagef("want %d argument(s) (%s), got %d", n, strings.TrimPrefix(cmd.Use, cmd.Name()+" "), len(args))
		}
		return nil
	}
}
