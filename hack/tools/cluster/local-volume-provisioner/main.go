// Command local-volume-provisioner is the local cluster's dynamic
// provisioner, on sigs.k8s.io/sig-storage-lib-external-provisioner (which
// speaks the PersistentVolume controller's protocol). It runs on the node,
// as a host process like the kubelet, and serves two StorageClasses:
//
//   - a class annotated modelguard.dev/encrypted-at-rest: "true" ("encrypted"):
//     each volume is a directory under --root with its own kernel fscrypt v2
//     policy and its own random 512-bit key. The key lives only in the
//     filesystem's keyring in the kernel; deleting the volume removes it.
//   - any other class of this provisioner ("standard"): a plain directory.
//
// --root must be on a filesystem with fscrypt (ext4 with the encrypt
// feature); the local cluster mounts one from a loop device.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Wire names shared with the local cluster and the e2e tests.
const (
	// EncryptedAnnotation on a StorageClass asks for encrypted volumes; on a
	// PersistentVolume it says the volume is.
	EncryptedAnnotation = "modelguard.dev/encrypted-at-rest"
	// KeyIDAnnotation on a PersistentVolume names its fscrypt key (the
	// kernel's identifier, not the key).
	KeyIDAnnotation = "modelguard.dev/fscrypt-key-identifier"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the provisioner's identity")
	name := flag.String("provisioner-name", "modelguard.dev/local-volume", "the provisioner name StorageClasses name")
	root := flag.String("root", "", "directory for the volumes, on a filesystem with fscrypt")
	node := flag.String("node", "", "the node's name: volumes are pinned to it")
	klog.InitFlags(nil)
	flag.Parse()
	if err := run(*kubeconfig, *name, *root, *node); err != nil {
		fmt.Fprintln(os.Stderr, "local-volume-provisioner:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, name, root, node string) error {
	if root == "" || node == "" {
		return errors.New("--root and --node are required")
	}
	if err := SupportsFscrypt(root); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("building a client: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p := &provisioner{root: root, node: node}
	pc := controller.NewProvisionController(ctx, client, name, p,
		controller.LeaderElection(false),
		controller.FailedProvisionThreshold(3),
		controller.FailedDeleteThreshold(0))
	klog.InfoS("Serving volumes", "provisioner", name, "root", root, "node", node)
	pc.Run(ctx)
	return nil
}

type provisioner struct {
	root string
	node string
}

var _ controller.Provisioner = (*provisioner)(nil)

// Provision creates the volume's directory (encrypted under a new key when
// the class asks) and returns its PersistentVolume.
func (p *provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	encrypted, err := wantsEncryption(opts.StorageClass.Annotations)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	dir := filepath.Join(p.root, opts.PVName)
	// A retry after a failed attempt starts over: nothing was handed out.
	if err := p.remove(dir); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("creating %s: %w", dir, err)
	}
	var keyID string
	if encrypted {
		id, err := encryptDir(p.root, dir)
		if err != nil {
			_ = p.remove(dir)
			return nil, controller.ProvisioningFinished, err
		}
		keyID = id.String()
	}
	// Pods of any user may write: hostPath volumes get no fsGroup ownership.
	if err := os.Chmod(dir, 0o777); err != nil {
		_ = p.remove(dir)
		return nil, controller.ProvisioningFinished, fmt.Errorf("opening %s to the pods: %w", dir, err)
	}
	klog.InfoS("Provisioned", "pv", opts.PVName, "claim", klog.KObj(opts.PVC), "encrypted", encrypted)
	return buildPV(opts, dir, p.node, keyID), controller.ProvisioningFinished, nil
}

// encryptDir sets a fresh key's policy on dir. The key leaves this function
// only into the kernel.
func encryptDir(root, dir string) (KeyID, error) {
	key, err := NewKey()
	if err != nil {
		return KeyID{}, err
	}
	defer clear(key)
	id, err := AddKey(root, key)
	if err != nil {
		return id, err
	}
	if err := SetPolicy(dir, id); err != nil {
		_ = RemoveKey(root, id)
		return id, err
	}
	return id, nil
}

// wantsEncryption reads the class's annotation; a value other than "true" or
// "false" is an error rather than a silently plain volume.
func wantsEncryption(annotations map[string]string) (bool, error) {
	switch v, ok := annotations[EncryptedAnnotation]; {
	case !ok || v == "false":
		return false, nil
	case v == "true":
		return true, nil
	default:
		return false, fmt.Errorf("StorageClass annotation %s=%q: want \"true\" or \"false\"", EncryptedAnnotation, v)
	}
}

// buildPV returns the PersistentVolume of a provisioned directory.
func buildPV(opts controller.ProvisionOptions, dir, node, keyID string) *corev1.PersistentVolume {
	annotations := map[string]string{}
	if keyID != "" {
		annotations[EncryptedAnnotation] = "true"
		annotations[KeyIDAnnotation] = keyID
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	hostPathType := corev1.HostPathDirectory
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName, Annotations: annotations},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: opts.PVC.Spec.Resources.Requests[corev1.ResourceStorage]},
			MountOptions:                  opts.StorageClass.MountOptions,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{node},
				}}}},
			}},
		},
	}
}

// Delete removes the volume's files, then its key.
func (p *provisioner) Delete(ctx context.Context, pv *corev1.PersistentVolume) error {
	if pv.Spec.HostPath == nil {
		return &controller.IgnoredError{Reason: "not a volume of this provisioner (no hostPath)"}
	}
	dir := filepath.Clean(pv.Spec.HostPath.Path)
	if filepath.Dir(dir) != filepath.Clean(p.root) {
		return fmt.Errorf("PersistentVolume %s points at %s, outside the volumes root %s: not deleting it", pv.Name, dir, p.root)
	}
	if err := p.remove(dir); err != nil {
		return err
	}
	klog.InfoS("Deleted", "pv", pv.Name)
	return nil
}

// remove deletes dir and, if it is encrypted, its key. A missing dir is fine.
func (p *provisioner) remove(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	id, encrypted, err := PolicyKey(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	if encrypted {
		if err := RemoveKey(p.root, id); err != nil {
			return err
		}
		if present, err := KeyPresent(p.root, id); err != nil || present {
			return errors.Join(err, fmt.Errorf("volume key %s of %s is still in the kernel after removal", id, strings.TrimPrefix(dir, p.root+"/")))
		}
	}
	return nil
}
