package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/progress"
	"github.com/modelguard/modelguard/internal/seal"
	"github.com/modelguard/modelguard/internal/version"
)

func (c *cli) sealCommand() *cobra.Command {
	var (
		kek       kekFlags
		owner     seal.Ownership
		chunkSize string
		workers   int
		mode      string
		interval  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "seal SRC_DIR OUT_DIR",
		Short: "Encrypt a model directory into a sealed bundle",
		Long: strings.TrimSpace(`
Seal encrypts every file under SRC_DIR into a new bundle in OUT_DIR (which must
not exist or be empty), keeping relative paths: OUT_DIR/modelguard.json is the
manifest and OUT_DIR/<path>.sealed each file's ciphertext.

A fresh random data key encrypts the bundle; the key-encryption key (--kek-file
or --kek-secret) wraps it. Symlinks to files are followed.

On success the model digest is printed on stdout, alone on its line: put it in
a ProtectedModel's spec.weights.digest.`),
		Example: `  # A KEK for trying things out:
  head -c 32 /dev/urandom > kek.bin
  modelguard seal ./llama-8b ./llama-8b.sealed --kek-file kek.bin \
      --owner "Acme Corp" --license LicenseRef-Acme-Proprietary

  # With the KEK in a Kubernetes Secret:
  modelguard seal ./llama-8b ./llama-8b.sealed --kek-secret models/llama-kek:kek`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(chunkSize)
			if err != nil {
				return usagef("--chunk-size %q: %v", chunkSize, err)
			}
			p, err := kek.provider(cmd.Context())
			if err != nil {
				return err
			}
			meter, err := c.meter("seal", mode, interval)
			if err != nil {
				return err
			}
			start := time.Now()
			meter.Start()
			m, err := seal.Seal(cmd.Context(), args[0], args[1], seal.SealOptions{
				Provider:  p,
				Ownership: owner,
				ChunkSize: size,
				Workers:   workers,
				Progress:  meter,
				SealedBy:  "modelguard " + version.Version,
			})
			meter.Finish()
			if err != nil {
				return err
			}
			elapsed := time.Since(start)
			fmt.Fprintf(c.stderr, "sealed %d files (%s) into %s in %s (%s)\n",
				len(m.Files), progress.Bytes(m.TotalSize()), args[1], elapsed.Round(time.Millisecond),
				progress.FormatRate(progress.Rate(m.TotalSize(), elapsed)))
			fmt.Fprintln(c.stdout, m.ModelDigest)
			return nil
		},
	}
	fs := cmd.Flags()
	kek.register(fs)
	fs.StringVar(&owner.Owner, "owner", "", "Legal owner of the weights, recorded in the manifest (e.g. \"Acme Corp\")")
	fs.StringVar(&owner.License, "license", "", "License, an SPDX expression or LicenseRef-… id")
	fs.StringVar(&owner.Copyright, "copyright", "", "Copyright notice")
	fs.StringVar(&owner.Classification, "classification", "TradeSecret",
		"Classification: "+strings.Join(seal.Classifications, ", "))
	fs.StringVar(&chunkSize, "chunk-size", "1MiB",
		fmt.Sprintf("Plaintext chunk size, a power of two from %s to %s", progress.Bytes(seal.MinChunkSize), progress.Bytes(seal.MaxChunkSize)))
	registerPerfFlags(fs, &workers, &mode, &interval)
	return cmd
}

func (c *cli) unsealCommand() *cobra.Command {
	var (
		flags     openFlags
		release   keyReleaseFlags
		allowDisk bool
		keep      bool
		termLog   string
	)
	cmd := &cobra.Command{
		Use:   "unseal BUNDLE DEST",
		Short: "Decrypt a sealed bundle into a memory-backed directory",
		Long: strings.TrimSpace(fmt.Sprintf(`
Unseal authenticates and decrypts the bundle BUNDLE (a directory, or an https://
URL streamed with no ciphertext staged on disk) into DEST.

The key is one of:
  --key-release URL   the data key, from the operator's key-release service, as
                      a protected pod's unseal init container gets it. The pod
                      presents its projected ServiceAccount token (--token-file)
                      and the bundle's key record and model digest; the operator
                      verifies the pod and returns the data key sealed to a key
                      pair made for this run alone. Needs --model,
                      --expect-digest (checked against the bundle before any
                      request), and in the environment:
                        $%-26[1]s PEM: the only CAs trusted
                                                    for the service
                        $%-26[2]s the pod's UID
                      While the service is unavailable, unseal retries with
                      backoff, a line per retry; a refusal is final and names
                      its reason.
  --dek-file or $%-16[3]s the bundle's data key.
  --kek-file or --kek-secret      the key-encryption key.

With --expect-digest the manifest's model digest must match before any
plaintext is written, and the key-encryption key unwraps the data key only
for that digest. Every chunk is authenticated as it is decrypted, and every
file's plaintext is hashed in the same pass: its digest must match the
authenticated manifest's before any file is moved into place.

DEST must be on tmpfs or ramfs (checked with statfs) unless --allow-disk is
given. Files are written into a temporary directory inside DEST and renamed
into place at the end, replacing same-named entries (so that a re-run in the
same volume succeeds) unless --keep-existing; on any error, or SIGTERM, every
plaintext byte written is removed and the exit code is non-zero.

The outcome is written as one line to the termination log (/dev/termination-log
in a Kubernetes container, if it exists): the reason on failure, e.g.
"chunk 37 of model.safetensors failed authentication" or "key release denied
(PodSpecMismatch): …", and on success
"ok digest=sha256:… files=N bytes=N seconds=S format=V".`,
			mlv1alpha1.EnvKeyReleaseCA, mlv1alpha1.EnvPodUID, keys.DEKEnvVar)),
		Example: fmt.Sprintf(`  # In a protected pod's unseal init container (the operator generates it):
  %[1]s="$(cat ca.crt)" %[2]s=… \
  modelguard unseal --key-release https://modelguard-key-release.modelguard-system.svc \
      --model ProtectedModel/nlp/sentiment --expect-digest sha256:… --progress log \
      /bundle /models

  # At a terminal, with the KEK:
  modelguard unseal ./llama-8b.sealed /dev/shm/llama-8b --kek-file kek.bin

  # Streaming from a web server:
  modelguard unseal https://models.example.com/llama-8b /dev/shm/llama-8b --dek-file dek`,
			mlv1alpha1.EnvKeyReleaseCA, mlv1alpha1.EnvPodUID),
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			var res *seal.Result
			termLogSet := cmd.Flags().Changed("termination-log")
			defer func() {
				if werr := writeTerminationLog(termLog, termLogSet, res, err); werr != nil && err == nil {
					err = werr
				}
			}()
			kr, err := release.parse(cmd, &flags, c.getenv)
			if err != nil {
				return err
			}
			opts, meter, err := c.openOptions(cmd, &flags, "unseal", kr, args[0])
			if err != nil {
				return err
			}
			defer clear(opts.Key.DEK)
			meter.Start()
			res, err = seal.Unseal(cmd.Context(), args[0], args[1], seal.UnsealOptions{OpenOptions: opts, AllowDisk: allowDisk, KeepExisting: keep})
			meter.Finish()
			if err != nil && cmd.Context().Err() != nil {
				return fmt.Errorf("interrupted; the plaintext written so far was removed: %w", err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "unsealed %d files (%s) of %s into %s in %s (%s)\n",
				res.Files, progress.Bytes(res.Bytes), res.Manifest.ModelDigest, args[1],
				res.Duration.Round(time.Millisecond), progress.FormatRate(progress.Rate(res.Bytes, res.Duration)))
			return nil
		},
	}
	fs := cmd.Flags()
	flags.register(fs)
	release.register(fs)
	fs.BoolVar(&allowDisk, "allow-disk", false, "Allow a DEST that is not memory-backed, which puts plaintext weights on disk")
	fs.BoolVar(&keep, "keep-existing", false,
		"Fail if DEST already has entries with the names of the bundle's files (by default they are replaced; other entries are never touched)")
	fs.StringVar(&termLog, "termination-log", "/dev/termination-log",
		"File for the one-line outcome; the default is written only if it exists")
	return cmd
}

// writeTerminationLog writes unseal's outcome, the seal.Report line, as one
// line where the kubelet reads a container's termination message. The
// default path is written only if it exists (in a Kubernetes container); a
// path given on the command line is always written.
func writeTerminationLog(path string, explicit bool, res *seal.Result, runErr error) error {
	if path == "" {
		return nil
	}
	if !explicit {
		if _, err := os.Stat(path); err != nil {
			return nil
		}
	}
	var line string
	switch {
	case runErr != nil:
		line = seal.FormatReport(seal.FailureReport(runErr))
	case res != nil && res.Manifest != nil:
		line = seal.FormatReport(seal.SuccessReport(res))
	default:
		return nil
	}
	if err := os.WriteFile(path, []byte(line+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing the termination log: %w", err)
	}
	return nil
}

// openOptions returns the options of unseal and verify. The key comes last,
// once every flag is checked: with key release (kr not nil) getting it is a
// request that the operator counts, records on the model and grants once per
// pod. The caller clears the returned options' Key.DEK.
func (c *cli) openOptions(cmd *cobra.Command, flags *openFlags, label string, kr *keyRelease, bundle string) (seal.OpenOptions, *progress.Meter, error) {
	client, err := flags.httpClient()
	if err != nil {
		return seal.OpenOptions{}, nil, err
	}
	meter, err := c.meter(label, flags.progress, flags.interval)
	if err != nil {
		return seal.OpenOptions{}, nil, err
	}
	var key seal.Key
	if kr != nil {
		key.DEK, err = c.releaseKey(cmd.Context(), kr, bundle, flags.expectDigest, client)
	} else {
		key, err = flags.key(cmd.Context(), c.getenv)
	}
	if err != nil {
		return seal.OpenOptions{}, nil, err
	}
	return seal.OpenOptions{
		Key:          key,
		ExpectDigest: flags.expectDigest,
		Workers:      flags.workers,
		HTTPClient:   client,
		Progress:     meter,
	}, meter, nil
}

func (c *cli) verifyCommand() *cobra.Command {
	var flags openFlags
	cmd := &cobra.Command{
		Use:   "verify BUNDLE",
		Short: "Authenticate every chunk of a sealed bundle without writing plaintext",
		Long: strings.TrimSpace(`
Verify authenticates the manifest and every chunk of BUNDLE (a directory or an
https:// URL) with the same key flags as unseal, checks that every file's
decrypted content has the digest the manifest records, and writes no
plaintext anywhere. On success it prints the model digest on stdout.`),
		Example: `  modelguard verify ./llama-8b.sealed --kek-file kek.bin --expect-digest sha256:…`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, meter, err := c.openOptions(cmd, &flags, "verify", nil, args[0])
			if err != nil {
				return err
			}
			defer clear(opts.Key.DEK)
			meter.Start()
			res, err := seal.Verify(cmd.Context(), args[0], opts)
			meter.Finish()
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "verified %d files (%s) in %s (%s)\n", res.Files, progress.Bytes(res.Bytes),
				res.Duration.Round(time.Millisecond), progress.FormatRate(progress.Rate(res.Bytes, res.Duration)))
			fmt.Fprintln(c.stdout, res.Manifest.ModelDigest)
			return nil
		},
	}
	flags.register(cmd.Flags())
	return cmd
}

func (c *cli) inspectCommand() *cobra.Command {
	var (
		output string
		caFile string
	)
	cmd := &cobra.Command{
		Use:   "inspect BUNDLE",
		Short: "Print a sealed bundle's manifest (no key needed)",
		Long: strings.TrimSpace(`
Inspect prints the manifest of BUNDLE (a directory or an https:// URL): files,
sizes, digests, ownership and key provider. It needs no key, and so cannot
authenticate what it prints: use verify for that.

Output formats (-o):
  table  for people (default)
  json   the manifest as indented JSON
  key    one line of JSON with the key provider, key id and wrapped data key
         (not secret: it opens only with the key-encryption key)
  raw    the manifest file's exact bytes, which a program can authenticate`),
		Example: `  modelguard inspect ./llama-8b.sealed
  modelguard inspect -o json https://models.example.com/llama-8b | jq .modelDigest`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !map[string]bool{"table": true, "json": true, "key": true, "raw": true}[output] {
				return usagef("-o %q: want table, json, key or raw", output)
			}
			flags := openFlags{caFile: caFile}
			client, err := flags.httpClient()
			if err != nil {
				return err
			}
			raw, m, err := seal.ReadManifestFile(cmd.Context(), args[0], client)
			if err != nil {
				return err
			}
			switch output {
			case "raw":
				_, err = c.stdout.Write(raw)
				return err
			case "key":
				return json.NewEncoder(c.stdout).Encode(m.Key)
			case "json":
				enc := json.NewEncoder(c.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(m)
			}
			return printManifest(c.stdout, args[0], m)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "Output format: table, json, key or raw")
	cmd.Flags().StringVar(&caFile, "ca-file", "", "PEM file of extra CA certificates to trust for an https BUNDLE")
	return cmd
}

func printManifest(w io.Writer, location string, m *seal.Manifest) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", k, v)
	}
	row("Bundle", location)
	row("Format", m.Format+", "+m.FormatDescription())
	row("Cipher", m.Cipher)
	row("Model digest", m.ModelDigest)
	row("Created", m.CreatedAt.Format(time.RFC3339))
	row("Sealed by", m.SealedBy)
	row("Bundle ID", m.BundleID)
	row("Owner", m.Ownership.Owner)
	row("License", m.Ownership.License)
	row("Copyright", m.Ownership.Copyright)
	row("Classification", m.Ownership.Classification)
	row("Key provider", m.Key.Provider)
	row("Key ID", m.Key.ID)
	row("Wrapped data key", fmt.Sprintf("%d bytes (not secret; shown by -o key)", len(m.Key.WrappedDEK)))
	row("Authenticated", "no: inspect reads the manifest without a key; run verify to authenticate it")
	row("Files", fmt.Sprintf("%d, %s", len(m.Files), progress.Bytes(m.TotalSize())))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSIZE\tBYTES\tCHUNK\tDIGEST")
	for _, f := range m.Files {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", f.Path, progress.Bytes(f.Size), f.Size, progress.Bytes(int64(f.ChunkSize)), f.Digest)
	}
	return tw.Flush()
}
