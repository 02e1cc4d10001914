package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// componentNames are the processes a running cluster has.
var componentNames = []string{"etcd", "containerd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kube-proxy", "kubelet", "kube-router", "fake-gpu-plugin", "local-volume-provisioner"}

// healthy reports whether the recorded cluster runs: every component alive
// and the node Ready.
func (c *Cluster) healthy(ctx context.Context, rec *Records) error {
	for _, name := range componentNames {
		p, ok := rec.process(name)
		if !ok || !p.alive() {
			return fmt.Errorf("%s is not running", name)
		}
	}
	client, err := c.client()
	if err != nil {
		return err
	}
	return c.nodeReady(ctx, client)
}

// Running reports whether a healthy cluster is up.
func (c *Cluster) Running(ctx context.Context) bool {
	rec, err := loadRecords(c.p.Records)
	if err != nil || rec == nil {
		return false
	}
	return c.healthy(ctx, rec) == nil
}

// Status writes the components, the node, its GPU capacity and the
// kubeconfig path to w, and returns an error when the cluster is not fully
// up.
func (c *Cluster) Status(ctx context.Context, w io.Writer) error {
	rec, err := loadRecords(c.p.Records)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Work dir:   %s\n", c.cfg.WorkDir)
	if rec == nil {
		fmt.Fprintln(w, "State:      down (no records)")
		return errors.New("the local cluster is down")
	}
	fmt.Fprintf(w, "Kubeconfig: %s   (export KUBECONFIG=%s)\n", c.p.AdminKubeconfig, c.p.AdminKubeconfig)
	fmt.Fprintf(w, "Started:    %s\n", rec.Started.Format("2006-01-02 15:04:05"))
	fmt.Fprintln(w, "Components:")
	var problems []string
	for _, name := range componentNames {
		p, ok := rec.process(name)
		switch {
		case !ok:
			fmt.Fprintf(w, "  %-24s not started\n", name)
			problems = append(problems, name+" not started")
		case p.alive():
			fmt.Fprintf(w, "  %-24s running  pid %-7d log %s\n", name, p.PID, p.Log)
		default:
			fmt.Fprintf(w, "  %-24s STOPPED  pid %-7d log %s\n", name, p.PID, p.Log)
			problems = append(problems, name+" stopped")
		}
	}
	client, err := c.client()
	if err != nil {
		return err
	}
	node, err := client.CoreV1().Nodes().Get(ctx, c.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		fmt.Fprintf(w, "Node:       %s: %v\n", c.cfg.NodeName, err)
		problems = append(problems, "node unreadable")
	} else {
		ready := "NotReady"
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = "Ready"
			}
		}
		if ready != "Ready" {
			problems = append(problems, "node not Ready")
		}
		var addrs []string
		for _, a := range node.Status.Addresses {
			addrs = append(addrs, fmt.Sprintf("%s=%s", a.Type, a.Address))
		}
		fmt.Fprintf(w, "Node:       %s %s (%s, kubelet %s)\n", node.Name, ready, strings.Join(addrs, " "), node.Status.NodeInfo.KubeletVersion)
		gpu := corev1.ResourceName(c.cfg.GPUResource)
		capacity, allocatable := node.Status.Capacity[gpu], node.Status.Allocatable[gpu]
		fmt.Fprintf(w, "GPUs:       %s capacity %s, allocatable %s (fake, from the fake-gpu-plugin device plugin)\n", gpu, capacity.String(), allocatable.String())
		var labels []string
		for k, v := range node.Labels {
			if strings.HasPrefix(k, "nvidia.com/") {
				labels = append(labels, k+"="+v)
			}
		}
		sort.Strings(labels)
		fmt.Fprintf(w, "GPU labels: %s\n", strings.Join(labels, " "))
	}
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err == nil {
		fmt.Fprintf(w, "Pods:       %d\n", len(pods.Items))
	}
	fmt.Fprintf(w, "Networks:   pods %s on %s (gateway %s), Services %s, API server for pods at %s:443 -> %s:%d\n",
		c.cfg.PodCIDR, c.cfg.BridgeName, c.cfg.BridgeIP, c.cfg.ServiceCIDR, c.cfg.APIServiceIP, c.cfg.BridgeIP, c.cfg.APIServerPort)
	problems = append(problems, c.statusAddons(ctx, w, client)...)
	if len(problems) > 0 {
		return fmt.Errorf("the local cluster is not healthy: %s", strings.Join(problems, ", "))
	}
	return nil
}

// statusAddons writes the state of the parts a hardened cluster has beyond
// the components: cluster DNS, dynamic volumes, Secrets at rest, the audit
// log and Kueue.
func (c *Cluster) statusAddons(ctx context.Context, w io.Writer, client *kubernetes.Clientset) []string {
	var problems []string
	dns := "ready"
	if err := c.coreDNSReady(ctx, client); err != nil {
		dns = err.Error()
		problems = append(problems, "CoreDNS not ready")
	}
	fmt.Fprintf(w, "DNS:        CoreDNS %s (kube-system/coredns, %s) at the kube-dns Service %s, zone %s: %s\n",
		images.CoreDNSVersion, images.CoreDNSRef, c.cfg.clusterDNSAddress(), ClusterDomain, dns)
	var classes []string
	if list, err := client.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{}); err == nil {
		for _, sc := range list.Items {
			desc := sc.Name
			if sc.Annotations[EncryptedAnnotation] == "true" {
				desc += " (fscrypt, a key per volume)"
			}
			classes = append(classes, desc)
		}
	}
	sort.Strings(classes)
	var volumes int
	if entries, err := os.ReadDir(c.cfg.VolumesDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), "pvc-") {
				volumes++
			}
		}
	}
	fmt.Fprintf(w, "Storage:    StorageClasses %s by %s; %d volumes on %s (ext4 on a loop device of %s)\n",
		strings.Join(classes, ", "), ProvisionerName, volumes, c.cfg.VolumesDir(), c.cfg.VolumesImage())
	fmt.Fprintf(w, "Secrets:    encrypted in etcd with %s (key in %s)\n", SecretsEncryptionProvider, c.p.EncryptionConfig)
	fmt.Fprintf(w, "Audit log:  %s (policy %s; Metadata level: exec/attach/port-forward/proxy, Secret reads, writes in workload namespaces)\n", c.p.AuditLog, c.p.AuditPolicy)
	kueue := "not installed (`local-cluster kueue` installs it)"
	if d, err := client.AppsV1().Deployments(KueueNamespace).Get(ctx, KueueDeployment, metav1.GetOptions{}); err == nil {
		kueue = fmt.Sprintf("%s in %s, %d/%d replicas available, image %s", images.KueueVersion, KueueNamespace, d.Status.AvailableReplicas, ptrValue(d.Spec.Replicas), images.KueueRef)
	}
	fmt.Fprintf(w, "Kueue:      %s\n", kueue)
	return problems
}

func ptrValue(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}
