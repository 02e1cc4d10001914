//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/modelguard/modelguard/hack/local-cluster/cluster"
)

// Dynamic volumes of the two StorageClasses, written by a pod and then read
// from the node's disk: the bytes of an `encrypted` volume's file (and its
// name) appear nowhere in the volumes filesystem's image, while those of a
// `standard` volume do, which shows the scan would have found them. Deleting
// the claim removes the volume's directory and its key from the kernel.
func TestEncryptedVolumeIsCiphertextOnDisk(t *testing.T) {
	t.Parallel()
	workDir, err := clusterWorkDir()
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, "e2e-storage")
	ctx := context.Background()

	classes := map[string]string{"secret": cluster.EncryptedStorageClass, "plain": cluster.StandardStorageClass}
	for claim, class := range classes {
		_, err := client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: claim},
			Spec: corev1.PersistentVolumeClaimSpec{
				StorageClassName: ptr.To(class),
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating claim %s of class %s: %v", claim, class, err)
		}
	}
	sc, err := client.StorageV1().StorageClasses().Get(ctx, cluster.EncryptedStorageClass, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sc.Annotations[cluster.EncryptedAnnotation] != "true" {
		t.Errorf("StorageClass %s lacks %s=true: %v", sc.Name, cluster.EncryptedAnnotation, sc.Annotations)
	}

	c := restrictedContainer("writer", "idle")
	c.VolumeMounts = []corev1.VolumeMount{{Name: "secret", MountPath: "/secret"}, {Name: "plain", MountPath: "/plain"}}
	pod := restrictedPod(ns, "writer", nil, c)
	for claim := range classes {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: claim, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
		}})
	}
	createPod(t, pod)
	waitForRunning(t, ns, "writer")

	secretName, secretMarker := "weights-"+randomSuffix()+".bin", "MARKER-ENCRYPTED-"+randomSuffix()+randomSuffix()
	plainName, plainMarker := "notes-"+randomSuffix()+".txt", "MARKER-PLAIN-"+randomSuffix()+randomSuffix()
	for path, content := range map[string]string{"/secret/" + secretName: secretMarker, "/plain/" + plainName: plainMarker} {
		if _, err := execIn(ns, "writer", "writer", "/demo-server", "write", path, strings.Repeat(content+"\n", 64)); err != nil {
			t.Fatalf("writing %s: %v", path, err)
		}
	}

	pvs := map[string]*corev1.PersistentVolume{}
	for claim := range classes {
		pvc, err := client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the PersistentVolume of claim %s: %v", claim, err)
		}
		pvs[claim] = pv
	}
	keyID := pvs["secret"].Annotations[cluster.KeyIDAnnotation]
	if pvs["secret"].Annotations[cluster.EncryptedAnnotation] != "true" || keyID == "" {
		t.Fatalf("the encrypted volume's PV lacks its annotations: %v", pvs["secret"].Annotations)
	}
	if _, ok := pvs["plain"].Annotations[cluster.EncryptedAnnotation]; ok {
		t.Errorf("the standard volume's PV claims encryption: %v", pvs["plain"].Annotations)
	}
	volumesDir := filepath.Join(workDir, "run", "volumes")
	if present, err := fscryptKeyPresent(volumesDir, keyID); err != nil || !present {
		t.Fatalf("key %s of the encrypted volume: present=%v, %v; want present while the volume exists", keyID, present, err)
	}
	// The same file seen through the filesystem (key in the kernel) is the
	// pod's plaintext: the volume is the one the pod wrote.
	data, err := os.ReadFile(filepath.Join(pvs["secret"].Spec.HostPath.Path, secretName))
	if err != nil || !strings.Contains(string(data), secretMarker) {
		t.Fatalf("reading the encrypted volume through the node's filesystem: %v (%d bytes); want the pod's plaintext", err, len(data))
	}

	// Flush the volumes filesystem through its loop device into the image
	// file, then read the image's bytes: what the disk holds.
	syscall.Sync()
	image := filepath.Join(workDir, "run", "volumes.img")
	found, err := diskContains(image, []byte(secretMarker), []byte(secretName), []byte(plainMarker), []byte(plainName))
	if err != nil {
		t.Fatalf("scanning %s: %v", image, err)
	}
	if found[0] || found[1] {
		t.Errorf("the encrypted volume's plaintext is on disk in %s: contents found=%v, file name found=%v", image, found[0], found[1])
	}
	if !found[2] || !found[3] {
		t.Errorf("the standard volume's marker (%v) or file name (%v) is not in %s: the scan cannot see plaintext, so its finding nothing proves nothing", found[2], found[3], image)
	}

	// Deleting the claim removes the volume and its key.
	if err := client.CoreV1().Pods(ns).Delete(ctx, "writer", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "secret", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().PersistentVolumes().Get(ctx, pvs["secret"].Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("the PersistentVolume %s of the deleted claim is still there after 90s", pvs["secret"].Name)
	}
	if _, err := os.Stat(pvs["secret"].Spec.HostPath.Path); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's directory %s: %v; want it gone", pvs["secret"].Spec.HostPath.Path, err)
	}
	if present, err := fscryptKeyPresent(volumesDir, keyID); err != nil || present {
		t.Errorf("key %s of the deleted volume: present=%v, %v; want it removed from the kernel", keyID, present, err)
	}
}
