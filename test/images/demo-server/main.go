// Command demo-server is the local cluster's stand-in model server, and the
// small client the e2e tests and the demo run inside pods.
//
//	demo-server [serve] [--dir /models] [--addr :8080]
//	    Serve GET / (a JSON report of the model directory: every file's size
//	    and SHA-256, and whether the directory is tmpfs) and GET /healthz.
//	    Like a real model server it answers about the weights, and never
//	    with their bytes: an allowed client (or a pod given the allowed
//	    clients' labels) gets digests, not the model.
//	demo-server report [--dir /models]
//	    Print the same JSON report, for `kubectl exec`.
//	demo-server write FILE CONTENT
//	    Write CONTENT to FILE (an init container seeding a memory volume).
//	demo-server fetch [--timeout 3s] URL
//	    GET URL and print the body; exit 1 when there is no answer. Tests use
//	    it to prove that a NetworkPolicy lets a client through or drops it.
//	demo-server apicheck
//	    Call the API server the way an in-cluster client does (the
//	    KUBERNETES_SERVICE_HOST ClusterIP, the mounted token and CA) and print
//	    the HTTP status.
//	demo-server lookup [--wait 30s] NAME...
//	    Resolve each NAME through the pod's resolver (cluster DNS) and print
//	    "NAME IP,..." lines; exit 1 when one does not resolve in time.
//	demo-server env NAME
//	    Print an environment variable (the image has no shell).
//	demo-server idle
//	    Sleep until terminated (a client pod that tests exec into).
//
// Tests check plaintext through the report: the digests prove what the server
// sees, and the tmpfs flag proves it lives in memory, not on the node's disk.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// tmpfsMagic is TMPFS_MAGIC from linux/magic.h, the f_type statfs reports for
// tmpfs, which is what a memory-backed emptyDir is.
const tmpfsMagic = 0x01021994

// Report describes a model directory.
type Report struct {
	Dir      string       `json:"dir"`
	Tmpfs    bool         `json:"tmpfs"`
	FSType   string       `json:"fsType"`
	Hostname string       `json:"hostname"`
	Files    []FileReport `json:"files"`
}

// FileReport describes one file of the model directory.
type FileReport struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "report":
		err = printReport(args)
	case "write":
		err = write(args)
	case "fetch":
		err = fetch(args)
	case "apicheck":
		err = apicheck()
	case "lookup":
		err = lookup(args)
	case "env":
		if len(args) != 1 {
			err = errors.New("usage: demo-server env NAME")
			break
		}
		v, ok := os.LookupEnv(args[0])
		if !ok {
			err = fmt.Errorf("%s is not set", args[0])
			break
		}
		fmt.Println(v)
	case "idle":
		idle()
	default:
		err = fmt.Errorf("unknown command %q (want serve, report, write, fetch, apicheck, lookup, env or idle)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-server:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fl.String("dir", "/models", "model directory to report and serve")
	addr := fl.String("addr", ":8080", "listen address")
	if err := fl.Parse(args); err != nil {
		return err
	}
	srv := &http.Server{Addr: *addr, Handler: newMux(*dir), ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Fprintf(os.Stderr, "demo-server: serving %s on %s\n", *dir, *addr)
	select {
	case err := <-errc:
		return fmt.Errorf("serving on %s: %w", *addr, err)
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	}
}

// newMux serves the report of dir and a health check, and nothing of the
// weights themselves.
func newMux(dir string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		report, err := buildReport(dir)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(report)
	})
	return mux
}

func printReport(args []string) error {
	fl := flag.NewFlagSet("report", flag.ContinueOnError)
	dir := fl.String("dir", "/models", "model directory to report")
	if err := fl.Parse(args); err != nil {
		return err
	}
	report, err := buildReport(*dir)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(report)
}

func buildReport(dir string) (*Report, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", dir, err)
	}
	host, _ := os.Hostname()
	report := &Report{Dir: dir, Tmpfs: st.Type == tmpfsMagic, FSType: fmt.Sprintf("0x%x", st.Type), Hostname: host, Files: []FileReport{}}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		sum, size, err := digestFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return fmt.Errorf("relative path of %s: %w", path, err)
		}
		report.Files = append(report.Files, FileReport{Path: rel, Size: size, SHA256: sum})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walking %s: %w", dir, err)
	}
	sort.Slice(report.Files, func(i, j int) bool { return report.Files[i].Path < report.Files[j].Path })
	return report, nil
}

func digestFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func write(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: demo-server write FILE CONTENT")
	}
	if err := os.MkdirAll(filepath.Dir(args[0]), 0o755); err != nil {
		return fmt.Errorf("creating the directory of %s: %w", args[0], err)
	}
	if err := os.WriteFile(args[0], []byte(args[1]), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", args[0], err)
	}
	return nil
}

func fetch(args []string) error {
	fl := flag.NewFlagSet("fetch", flag.ContinueOnError)
	timeout := fl.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 1 {
		return errors.New("usage: demo-server fetch [--timeout 3s] URL")
	}
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get(fl.Arg(0))
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	os.Stdout.Write(body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answer: %s", resp.Status)
	}
	return nil
}

// lookup resolves each name through the pod's resolver (cluster DNS),
// retrying until --wait passes, and prints "NAME IP[,IP...]" lines.
func lookup(args []string) error {
	fl := flag.NewFlagSet("lookup", flag.ContinueOnError)
	wait := fl.Duration("wait", 0, "keep retrying a name that does not resolve for this long")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() == 0 {
		return errors.New("usage: demo-server lookup [--wait 30s] NAME...")
	}
	deadline := time.Now().Add(*wait)
	for _, name := range fl.Args() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(ctx, name)
			cancel()
			if err == nil {
				sort.Strings(addrs)
				fmt.Printf("%s %s\n", name, strings.Join(addrs, ","))
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("cannot resolve %s: %w", name, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	return nil
}

func apicheck() error {
	const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return errors.New("KUBERNETES_SERVICE_HOST/PORT are not set: is this running in a pod with service links?")
	}
	token, err := os.ReadFile(filepath.Join(saDir, "token"))
	if err != nil {
		return fmt.Errorf("reading the service account token: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(saDir, "ca.crt"))
	if err != nil {
		return fmt.Errorf("reading the cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("the mounted ca.crt holds no certificate")
	}
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "kubernetes.default.svc"}},
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+host+":"+port+"/api", nil)
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("calling the API server at %s:%s: %w", host, port, err)
	}
	defer resp.Body.Close()
	fmt.Printf("status %d\n", resp.StatusCode)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the API server answered %s", resp.Status)
	}
	return nil
}

func idle() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
