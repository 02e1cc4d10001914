//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/seal"
)

// Key-release latency on the local cluster (issue 12), for the closing
// note's figures: `make bench-keyrelease`.
//
// What one request costs is the full verification chain of the manager's
// key-release endpoint, reached as a model's unseal init container reaches
// it: a fresh TCP connection through the Service's ClusterIP (kube-proxy),
// a TLS 1.3 handshake against the manager's serving certificate, and on the
// server TokenReview, the pod by UID, the owner chain (ReplicaSet,
// Deployment, model), no ephemeral containers, the pod spec against the
// generated one, the unseal container running and the server not started,
// the digest, the model not stalled, the ModelKey usable, and last the
// once-per-unseal-run ledger, plus the Event on the model.
//
// To get there, a model's unseal container is held "running, not yet
// asked": its bundle's manifest.json is a named pipe, which the container
// blocks opening (seal's dirSource opens the manifest before anything else
// and does not stat it). The benchmark then asks for that pod's key as the
// pod would, with tokens it mints through TokenRequest bound to the pod
// (audience modelguard-key-release), as the kubelet does. The first request
// is a real release (its data key is checked against the bundle's); every
// later one passes every check and is refused only at the very end,
// AlreadyReleased. The rest of a real release's cost, KEK unwrap and HPKE
// seal, is BenchmarkReleaseLoopback's in internal/keyrelease, which
// `make bench-keyrelease` runs as the in-process baseline.
//
// Every request carries a token of its own, minted beforehand, so that the
// API server's token cache never answers a TokenReview: each costs what a
// new pod's first request costs. The Service's DNS name is answered inside
// this process (see pinHost), so DNS is not part of the figures.

const (
	// benchRequests is the number of requests of each sub-benchmark.
	benchRequests = 200
	// benchConcurrency is how many requests the Concurrent sub-benchmark
	// keeps in flight.
	benchConcurrency = 16
)

// BenchmarkKeyReleaseOnCluster reports the latency of key-release requests
// that pass every check, p50 and p99 over 200 requests one after another
// (Sequential) and 200 requests 16 at a time (Concurrent). Run it with
// -benchtime 1x: each iteration is 200 requests.
func BenchmarkKeyReleaseOnCluster(b *testing.B) {
	op := installOperator(b)
	env := newModelEnv(b, op)
	kr := newHeldUnseal(b, env)

	kr.note(b, "load average before the first request: %s", loadAverage())
	// The one real release: the full chain, KEK unwrap and HPKE seal.
	tokens := kr.mintTokens(b, 1)
	began := time.Now()
	dek, err := kr.release(tokens[0])
	took := time.Since(began)
	if err != nil {
		b.Fatalf("the first request for pod %s/%s, a real release: %v", kr.ns, kr.pod.Name, err)
	}
	if !bytes.Equal(dek, env.dek) {
		b.Fatalf("the released data key is not the bundle's")
	}
	clear(dek)
	kr.note(b, "first request, a real release of the bundle's data key to pod %s/%s: %.1f ms (one sample, cold)", kr.ns, kr.pod.Name, ms(took))

	b.Run("Sequential", func(b *testing.B) {
		kr.run(b, 1)
	})
	b.Run("Concurrent", func(b *testing.B) {
		kr.run(b, benchConcurrency)
	})
	// Every request saw the same unseal run, so each was the full chain.
	kr.checkStillHeld(b)
}

// heldUnseal is a model pod whose unseal container runs and waits for its
// manifest, and what a request for its key needs.
type heldUnseal struct {
	ns, model string
	pod       *corev1.Pod
	// unsealID is the unseal container's ID: the verifier's unseal run.
	unsealID string
	params   keyrelease.ReleaseParams
	client   *keyrelease.Client
	// tokens mints tokens (its own rate limits, so that minting 200 takes
	// seconds, not the shared client's 5 per second).
	tokens kubernetes.Interface
	// notes are what the setup found, for the first sub-benchmark's
	// output: without -v the parent benchmark's log is not printed.
	notes []string
}

// note logs what the setup found and keeps it for the first sub-benchmark
// to print.
func (kr *heldUnseal) note(b *testing.B, format string, args ...any) {
	b.Helper()
	b.Logf(format, args...)
	kr.notes = append(kr.notes, fmt.Sprintf(format, args...))
}

// newHeldUnseal creates a model whose bundle's manifest.json is a named pipe
// and waits until its unseal container runs, blocked opening it. It removes
// the model at cleanup and then lets the container go.
func newHeldUnseal(b *testing.B, env *modelEnv) *heldUnseal {
	b.Helper()
	ctx := context.Background()
	manifest, err := seal.ReadManifest(ctx, env.bundle, nil)
	if err != nil {
		b.Fatalf("reading the sealed bundle's manifest: %v", err)
	}
	root, bundle := env.copyBundle(b, "held")
	fifo := filepath.Join(bundle, seal.ManifestName)
	if err := os.Remove(fifo); err != nil {
		b.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		b.Fatalf("making %s a named pipe: %v", fifo, err)
	}
	if err := os.Chmod(fifo, 0o644); err != nil {
		b.Fatal(err)
	}

	kr := &heldUnseal{ns: env.newNamespace(b, "e2e-bench-keys"), model: "bench"}
	claim := env.provideBundle(b, kr.ns, root)
	pm := env.protectedModel(kr.ns, kr.model, claim)
	createModel(b, pm)
	b.Cleanup(func() { kr.remove(b, fifo) })

	began := time.Now()
	var podName string
	err = eventually(3*time.Minute, func() error {
		pods := modelPods(b, kr.ns, kr.model)
		if len(pods) != 1 {
			return fmt.Errorf("the model has %d server pods, want 1", len(pods))
		}
		podName = pods[0].Name
		if s := initStatus(&pods[0], mlv1alpha1.ContainerUnseal); s == nil || s.State.Running == nil {
			return fmt.Errorf("the unseal container of pod %s does not run: %s", podName, describeStatus(&pods[0]))
		}
		return nil
	})
	if err != nil {
		b.Fatalf("%v\n%s", err, describeModel(kr.ns, kr.model))
	}
	// Still the same run a moment later: blocked on the pipe, not failing
	// and restarting.
	time.Sleep(3 * time.Second)
	pod, err := client.CoreV1().Pods(kr.ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s := initStatus(pod, mlv1alpha1.ContainerUnseal)
	if s == nil || s.State.Running == nil || s.RestartCount != 0 || s.ContainerID == "" {
		b.Fatalf("pod %s: the unseal container is not held on its manifest: %s", podName, describeStatus(pod))
	}
	kr.pod, kr.unsealID = pod, s.ContainerID
	kr.note(b, "pod %s/%s: unseal container running, blocked on its manifest, %.1fs after the model's creation", kr.ns, podName, time.Since(began).Seconds())

	// What the pod's unseal container would send and trust.
	unseal := pod.Spec.InitContainers[slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool {
		return c.Name == mlv1alpha1.ContainerUnseal
	})]
	endpoint := flagValue(unseal.Command, "--key-release")
	roots := x509.NewCertPool()
	for _, e := range unseal.Env {
		if e.Name == mlv1alpha1.EnvKeyReleaseCA && !roots.AppendCertsFromPEM([]byte(e.Value)) {
			b.Fatalf("$%s of the unseal container holds no PEM certificate", mlv1alpha1.EnvKeyReleaseCA)
		}
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" || u.Port() != "" {
		b.Fatalf("the unseal container's --key-release %q: want https://<Service>.<namespace>.svc", endpoint)
	}
	svcName, svcNamespace, ok := strings.Cut(strings.TrimSuffix(u.Hostname(), ".svc"), ".")
	if !ok {
		b.Fatalf("the unseal container's --key-release %q names no Service", endpoint)
	}
	svc, err := client.CoreV1().Services(svcNamespace).Get(ctx, svcName, metav1.GetOptions{})
	if err != nil {
		b.Fatalf("reading the key-release Service: %v", err)
	}
	ip := net.ParseIP(svc.Spec.ClusterIP).To4()
	if ip == nil || !ip.IsPrivate() || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 443 }) {
		b.Fatalf("Service %s/%s: ClusterIP %q, ports %v; want a private IPv4 ClusterIP on 443", svcNamespace, svcName, svc.Spec.ClusterIP, svc.Spec.Ports)
	}
	pinHost(b, u.Hostname(), ip)
	kr.note(b, "requests go to %s, that is the ClusterIP %s:443 of Service %s/%s", endpoint, ip, svcNamespace, svcName)

	kr.client, err = keyrelease.NewClient(keyrelease.ClientOptions{
		URL:     endpoint,
		RootCAs: roots,
		// No retry: a request that is not answered at once fails the
		// benchmark instead of hiding in its latency.
		Backoff:        keyrelease.Backoff{Initial: time.Millisecond, Max: time.Millisecond, MaxElapsed: time.Nanosecond},
		AttemptTimeout: 10 * time.Second,
		Log:            logr.Discard(),
	})
	if err != nil {
		b.Fatal(err)
	}
	kr.params = keyrelease.ReleaseParams{
		Model:       keyrelease.ModelRef{Kind: keyrelease.KindProtectedModel, Namespace: kr.ns, Name: kr.model},
		PodUID:      string(pod.UID),
		ModelDigest: manifest.ModelDigest,
		Bundle:      keyrelease.BundleRefOf(manifest.Binding()),
		Key:         manifest.Key,
	}
	cfg := restConfig(b)
	cfg.QPS, cfg.Burst = 100, 100
	kr.tokens, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return kr
}

// flagValue returns the argument after flag in argv.
func flagValue(argv []string, flag string) string {
	if i := slices.Index(argv, flag); i >= 0 && i+1 < len(argv) {
		return argv[i+1]
	}
	return ""
}

// mintTokens mints n tokens for the pod's ServiceAccount, bound to the pod,
// for the key-release audience: what the kubelet projects into the unseal
// container.
func (kr *heldUnseal) mintTokens(b *testing.B, n int) []keyrelease.Token {
	b.Helper()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{keyrelease.Audience},
		ExpirationSeconds: ptr.To[int64](mlv1alpha1.KeyReleaseTokenSeconds),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: kr.pod.Name, UID: kr.pod.UID},
	}}
	tokens := make([]keyrelease.Token, n)
	for i := range tokens {
		got, err := kr.tokens.CoreV1().ServiceAccounts(kr.ns).CreateToken(context.Background(), kr.pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
		if err != nil {
			b.Fatalf("TokenRequest for ServiceAccount %s/%s bound to pod %s: %v", kr.ns, kr.pod.Spec.ServiceAccountName, kr.pod.Name, err)
		}
		tokens[i] = keyrelease.Token(got.Status.Token)
	}
	return tokens
}

// release makes one request with token, as the unseal container would.
func (kr *heldUnseal) release(token keyrelease.Token) ([]byte, error) {
	p := kr.params
	p.Token = func() (keyrelease.Token, error) { return token, nil }
	return kr.client.Release(context.Background(), p)
}

// fullChain times one request that must pass every check and be refused
// only by the ledger; anything else is an error.
func (kr *heldUnseal) fullChain(token keyrelease.Token) (time.Duration, error) {
	began := time.Now()
	dek, err := kr.release(token)
	took := time.Since(began)
	var denied *keyrelease.DeniedError
	switch {
	case err == nil:
		clear(dek)
		return took, errors.New("the data key was released again: the request was not the full chain up to the ledger (did the unseal container or the manager restart?)")
	case errors.As(err, &denied) && denied.Reason == mlv1alpha1.ReasonAlreadyReleased:
		return took, nil
	}
	return took, err
}

// run makes benchRequests requests per iteration, concurrency at a time,
// and reports their latency.
func (kr *heldUnseal) run(b *testing.B, concurrency int) {
	for _, n := range kr.notes {
		b.Log("setup: " + n)
	}
	kr.notes = nil
	var latencies []time.Duration
	var wall time.Duration
	for b.Loop() {
		b.StopTimer()
		tokens := kr.mintTokens(b, benchRequests)
		b.StartTimer()
		took := make([]time.Duration, len(tokens))
		errs := make([]error, len(tokens))
		next := make(chan int)
		var wg sync.WaitGroup
		began := time.Now()
		for range concurrency {
			wg.Go(func() {
				for i := range next {
					took[i], errs[i] = kr.fullChain(tokens[i])
				}
			})
		}
		for i := range tokens {
			next <- i
		}
		close(next)
		wg.Wait()
		wall += time.Since(began)
		if err := errors.Join(errs...); err != nil {
			b.Fatalf("%d of %d requests did not end in %s: %v", countErrors(errs), len(errs), mlv1alpha1.ReasonAlreadyReleased, firstError(errs))
		}
		latencies = append(latencies, took...)
	}
	load := loadAverage()
	slices.Sort(latencies)
	var sum time.Duration
	for _, d := range latencies {
		sum += d
	}
	p50, p99 := percentile(latencies, 50), percentile(latencies, 99)
	mean := sum / time.Duration(len(latencies))
	rate := float64(len(latencies)) / wall.Seconds()
	b.ReportMetric(0, "ns/op") // an iteration is 200 requests: the figures are below
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(mean), "mean-ms")
	b.ReportMetric(ms(latencies[len(latencies)-1]), "max-ms")
	b.ReportMetric(rate, "req/s")
	b.ReportMetric(load1(load), "load1")
	b.ReportMetric(float64(concurrency), "in-flight")
	b.Logf("%d requests, %d at a time, each through every check to %s: p50 %.2f ms, p99 %.2f ms, mean %.2f ms, min %.2f ms, max %.2f ms; %.1f requests/s; load average %s",
		len(latencies), concurrency, mlv1alpha1.ReasonAlreadyReleased, ms(p50), ms(p99), ms(mean), ms(latencies[0]), ms(latencies[len(latencies)-1]), rate, load)
}

// checkStillHeld fails unless the pod's unseal container is still the run
// every request was checked against, and the server has not started.
func (kr *heldUnseal) checkStillHeld(b *testing.B) {
	b.Helper()
	pod, err := client.CoreV1().Pods(kr.ns).Get(context.Background(), kr.pod.Name, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s := initStatus(pod, mlv1alpha1.ContainerUnseal)
	if s == nil || s.State.Running == nil || s.ContainerID != kr.unsealID || s.RestartCount != 0 {
		b.Errorf("pod %s: the unseal container is no longer the run the requests were checked against: %s", pod.Name, describeStatus(pod))
	}
}

// remove deletes the model and lets its unseal container go: it is blocked
// opening the pipe, which opening it for writing and closing it ends (the
// container then reads an empty manifest and exits).
func (kr *heldUnseal) remove(b *testing.B, fifo string) {
	ctx := context.Background()
	pm := &mlv1alpha1.ProtectedModel{ObjectMeta: metav1.ObjectMeta{Namespace: kr.ns, Name: kr.model}}
	if err := modelClient(b).Delete(ctx, pm); err != nil && !apierrors.IsNotFound(err) {
		b.Errorf("deleting ProtectedModel %s/%s: %v", kr.ns, kr.model, err)
	}
	err := eventually(90*time.Second, func() error {
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
		if pods := modelPods(b, kr.ns, kr.model); len(pods) > 0 {
			return fmt.Errorf("the model's pods %v are still there", podNames(pods))
		}
		return nil
	})
	if err != nil {
		b.Logf("removing the benchmark's model: %v", err)
	}
}

// pinHost makes host resolve to ip in this process, for the rest of the
// benchmark: the key-release client dials the Service's name, for which its
// serving certificate is issued, and this node does not use the cluster's
// DNS. The answers come from a responder in this process, so no query
// leaves it and DNS is not in the figures; ip is the Service's ClusterIP.
func pinHost(b *testing.B, host string, ip net.IP) {
	old := net.DefaultResolver
	net.DefaultResolver = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		c, s := net.Pipe()
		go answerDNS(s, host, ip)
		return c, nil
	}}
	b.Cleanup(func() { net.DefaultResolver = old })
}

// answerDNS answers the DNS queries the Go resolver writes on a stream
// connection (each message after its 2-byte length).
func answerDNS(conn net.Conn, host string, ip net.IP) {
	defer conn.Close()
	for {
		var size [2]byte
		if _, err := io.ReadFull(conn, size[:]); err != nil {
			return
		}
		query := make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(conn, query); err != nil {
			return
		}
		answer, ok := dnsAnswer(query, host, ip)
		if !ok {
			return
		}
		if _, err := conn.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(answer))), answer...)); err != nil {
			return
		}
	}
}

// dnsAnswer answers a one-question query: host's A record is ip, host has no
// other record, and no other name exists. It reports false for a message it
// cannot read.
func dnsAnswer(query []byte, host string, ip net.IP) ([]byte, bool) {
	if len(query) < 12 || binary.BigEndian.Uint16(query[4:6]) != 1 {
		return nil, false
	}
	var labels []string
	i := 12
	for {
		if i >= len(query) {
			return nil, false
		}
		n := int(query[i])
		i++
		if n == 0 {
			break
		}
		if n > 63 || i+n > len(query) {
			return nil, false
		}
		labels = append(labels, string(query[i:i+n]))
		i += n
	}
	if i+4 > len(query) {
		return nil, false
	}
	qtype := binary.BigEndian.Uint16(query[i : i+2])
	question := query[12 : i+4]
	// A response (QR), authoritative (AA), recursion as asked (RD) and
	// available (RA).
	flags := uint16(0x8000|0x0400|0x0080) | binary.BigEndian.Uint16(query[2:4])&0x0100
	known := strings.EqualFold(strings.Join(labels, "."), strings.TrimSuffix(host, "."))
	if !known {
		flags |= 3 // NXDOMAIN
	}
	var answers uint16
	if known && qtype == 1 {
		answers = 1
	}
	msg := append([]byte{}, query[0], query[1])
	msg = binary.BigEndian.AppendUint16(msg, flags)
	msg = binary.BigEndian.AppendUint16(msg, 1) // the question
	msg = binary.BigEndian.AppendUint16(msg, answers)
	msg = append(msg, 0, 0, 0, 0) // no authority, no additional records
	msg = append(msg, question...)
	if answers == 1 {
		msg = append(msg, 0xc0, 12) // the question's name
		msg = binary.BigEndian.AppendUint16(msg, 1)
		msg = binary.BigEndian.AppendUint16(msg, 1)
		msg = binary.BigEndian.AppendUint32(msg, 60)
		msg = binary.BigEndian.AppendUint16(msg, 4)
		msg = append(msg, ip.To4()...)
	}
	return msg, true
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// loadAverage is the machine's 1, 5 and 15 minute load averages.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

func load1(avg string) float64 {
	var v float64
	_, _ = fmt.Sscanf(avg, "%g", &v)
	return v
}

func countErrors(errs []error) int {
	n := 0
	for _, err := range errs {
		if err != nil {
			n++
		}
	}
	return n
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
