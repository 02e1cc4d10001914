package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

func TestWantsEncryption(t *testing.T) {
	tests := []struct {
		annotations map[string]string
		want        bool
		wantErr     bool
	}{
		{annotations: nil, want: false},
		{annotations: map[string]string{EncryptedAnnotation: "false"}, want: false},
		{annotations: map[string]string{EncryptedAnnotation: "true"}, want: true},
		{annotations: map[string]string{EncryptedAnnotation: "yes"}, wantErr: true},
	}
	for _, tc := range tests {
		got, err := wantsEncryption(tc.annotations)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("wantsEncryption(%v) = %v, %v; want %v, error %v", tc.annotations, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestBuildPV(t *testing.T) {
	retain := corev1.PersistentVolumeReclaimRetain
	claim := &corev1.PersistentVolumeClaim{Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}}
	dirType := corev1.HostPathDirectory
	base := func(annotations map[string]string, reclaim corev1.PersistentVolumeReclaimPolicy) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: "pvc-1", Annotations: annotations},
			Spec: corev1.PersistentVolumeSpec{
				PersistentVolumeReclaimPolicy: reclaim,
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/v/pvc-1", Type: &dirType}},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{"node-a"}}},
				}}}},
			},
		}
	}
	tests := []struct {
		name  string
		class *storagev1.StorageClass
		keyID string
		want  *corev1.PersistentVolume
	}{
		{name: "plain, default reclaim", class: &storagev1.StorageClass{}, want: base(map[string]string{}, corev1.PersistentVolumeReclaimDelete)},
		{name: "encrypted names its key", class: &storagev1.StorageClass{}, keyID: "00ff",
			want: base(map[string]string{EncryptedAnnotation: "true", KeyIDAnnotation: "00ff"}, corev1.PersistentVolumeReclaimDelete)},
		{name: "class reclaim policy", class: &storagev1.StorageClass{ReclaimPolicy: &retain}, want: base(map[string]string{}, retain)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := buildPV(controller.ProvisionOptions{StorageClass: tc.class, PVName: "pvc-1", PVC: claim}, "/v/pvc-1", "node-a", tc.keyID)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("buildPV (-want +got):\n%s", diff)
			}
		})
	}
}

// The fscrypt calls on a real ext4 filesystem with the encrypt feature, made
// on a loop device. It needs root and mkfs.ext4; without them it says so and
// skips (the e2e storage test covers the same calls on the cluster's node).
func TestFscryptRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop device; the e2e storage test covers fscrypt on the node")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{"truncate", "-s", "64M", img}, {"mkfs.ext4", "-q", "-F", "-O", "encrypt", img}, {"mount", "-o", "loop", img, mnt}} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Skipf("cannot make an ext4 loop filesystem here (%v: %s); the e2e storage test covers fscrypt", err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })

	if err := SupportsFscrypt(mnt); err != nil {
		t.Fatal(err)
	}
	p := &provisioner{root: mnt, node: "n"}
	vol := filepath.Join(mnt, "pvc-x")
	if err := os.Mkdir(vol, 0o700); err != nil {
		t.Fatal(err)
	}
	id, err := encryptDir(mnt, vol)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := PolicyKey(vol)
	if err != nil || !ok || got != id {
		t.Fatalf("PolicyKey = %s, %v, %v; want %s, true", got, ok, err, id)
	}
	if present, err := KeyPresent(mnt, id); err != nil || !present {
		t.Fatalf("KeyPresent = %v, %v; want true", present, err)
	}
	if err := os.WriteFile(filepath.Join(vol, "f"), []byte("plaintext"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.remove(vol); err != nil {
		t.Fatal(err)
	}
	if present, err := KeyPresent(mnt, id); err != nil || present {
		t.Errorf("after remove, KeyPresent = %v, %v; want false", present, err)
	}
	if _, err := os.Stat(vol); !os.IsNotExist(err) {
		t.Errorf("after remove, %s: %v; want it gone", vol, err)
	}
}
