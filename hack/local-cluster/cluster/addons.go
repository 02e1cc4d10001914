package cluster

import (
	"context"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// The cluster's add-ons: CoreDNS in-cluster, and the StorageClasses of the
// local-volume-provisioner (a host process, see volumes.go). They are plain
// objects built here and created at Up.

// Wire names of the add-ons.
const (
	// DefaultClusterDNS is the kube-dns Service's ClusterIP, which the
	// kubelet's clusterDNS names.
	DefaultClusterDNS = "10.96.0.10"
	ClusterDomain     = "cluster.local"
	// CoreDNSPort is where CoreDNS listens inside its pod: 53, as in a real
	// cluster. NetworkPolicies match a pod's own port after the Service is
	// translated, so the DNS egress rule every protected workload carries
	// (port 53 to kube-dns) must meet CoreDNS on 53; it still runs as a
	// non-root user with no capabilities, through the namespaced sysctl
	// net.ipv4.ip_unprivileged_port_start.
	CoreDNSPort = 53

	// ProvisionerName is the provisioner of the StorageClasses below.
	ProvisionerName = "modelguard.dev/local-volume"
	// ProvisionerUser is the local-volume-provisioner's identity.
	ProvisionerUser = "modelguard:local-volume-provisioner"
	// EncryptedAnnotation marks a StorageClass whose volumes are encrypted at
	// rest (and each PersistentVolume that is).
	EncryptedAnnotation = "modelguard.dev/encrypted-at-rest"
	// KeyIDAnnotation on a PersistentVolume names its fscrypt key (the
	// kernel's identifier of it, not the key).
	KeyIDAnnotation = "modelguard.dev/fscrypt-key-identifier"
	// EncryptedStorageClass and StandardStorageClass are the two classes.
	EncryptedStorageClass = "encrypted"
	StandardStorageClass  = "standard"
)

// coreDNSCorefile serves only the cluster's zones. Records, and answers that
// a name does not exist (a headless Service's pod before its endpoint is
// published), live 5s, so that peers that look each other up at start find
// each other within seconds. It has no forward plugin:
// pods must never send a query to a resolver outside the machine, so any
// other name is refused.
func coreDNSCorefile() string {
	return fmt.Sprintf(`.:%d {
    errors
    health :8080
    ready :8181
    kubernetes %s in-addr.arpa ip6.arpa {
        pods insecure
        ttl 5
    }
    cache 30
    loadbalance
}
`, CoreDNSPort, ClusterDomain)
}

// coreDNSObjects are CoreDNS's ServiceAccount, read-only RBAC, Corefile,
// Deployment and the kube-dns Service, as kubeadm installs them, but with a
// container that passes Pod Security "restricted".
func (c Config) coreDNSObjects() (*corev1.ServiceAccount, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *corev1.ConfigMap, *appsv1.Deployment, *corev1.Service) {
	const ns, name = metav1.NamespaceSystem, "coredns"
	labels := map[string]string{"k8s-app": "kube-dns"}
	read := []string{"list", "watch"}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: read},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:coredns"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Data:       map[string]string{"Corefile": coreDNSCorefile()},
	}
	probe := func(path string, port int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}}, PeriodSeconds: 2}
	}
	dns := corev1.Container{
		Name:            name,
		Image:           images.CoreDNSRef,
		ImagePullPolicy: corev1.PullNever,
		Args:            []string{"-conf", "/etc/coredns/Corefile"},
		Ports: []corev1.ContainerPort{
			{Name: "dns", ContainerPort: CoreDNSPort, Protocol: corev1.ProtocolUDP},
			{Name: "dns-tcp", ContainerPort: CoreDNSPort, Protocol: corev1.ProtocolTCP},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("170Mi")},
		},
		VolumeMounts:    []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
		ReadinessProbe:  probe("/ready", 8181),
		LivenessProbe:   probe("/health", 8080),
		SecurityContext: RestrictedSecurityContext(),
	}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: name,
					// CoreDNS itself must not resolve through itself.
					DNSPolicy: corev1.DNSDefault,
					// A safe, namespaced sysctl (allowed by Pod Security
					// restricted): port 53 needs no capability in this pod.
					SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
						{Name: "net.ipv4.ip_unprivileged_port_start", Value: "53"},
					}},
					PriorityClassName:             "system-cluster-critical",
					TerminationGracePeriodSeconds: ptr.To[int64](1),
					Containers:                    []corev1.Container{dns},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: name}},
					}}},
				},
			},
		},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: ns, Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: c.ClusterDNS,
			Selector:  labels,
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(CoreDNSPort), Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, TargetPort: intstr.FromInt32(CoreDNSPort), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	return sa, role, binding, cm, deploy, svc
}

// storageObjects are the two StorageClasses and the provisioner's RBAC.
func storageObjects() ([]*storagev1.StorageClass, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	class := func(name string, annotations map[string]string) *storagev1.StorageClass {
		return &storagev1.StorageClass{
			ObjectMeta:        metav1.ObjectMeta{Name: name, Annotations: annotations},
			Provisioner:       ProvisionerName,
			ReclaimPolicy:     ptr.To(corev1.PersistentVolumeReclaimDelete),
			VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		}
	}
	classes := []*storagev1.StorageClass{
		class(EncryptedStorageClass, map[string]string{EncryptedAnnotation: "true"}),
		class(StandardStorageClass, nil),
	}
	all := []string{"get", "list", "watch", "create", "update", "patch", "delete"}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: ProvisionerUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"persistentvolumes"}, Verbs: all},
			{APIGroups: []string{""}, Resources: []string{"persistentvolumeclaims"}, Verbs: []string{"get", "list", "watch", "update", "patch"}},
			{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"storageclasses"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "update", "patch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: ProvisionerUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: ProvisionerUser},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: ProvisionerUser}},
	}
	return classes, role, binding
}

// createAddons creates the add-ons' objects; ones that exist are kept.
func (c *Cluster) createAddons(ctx context.Context, client *kubernetes.Clientset) error {
	sa, role, binding, cm, deploy, svc := c.cfg.coreDNSObjects()
	classes, provRole, provBinding := storageObjects()
	creates := []struct {
		what   string
		create func() error
	}{
		{"CoreDNS ServiceAccount", func() error {
			_, err := client.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, sa, metav1.CreateOptions{})
			return err
		}},
		{"CoreDNS ClusterRole", func() error {
			_, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
			return err
		}},
		{"CoreDNS ClusterRoleBinding", func() error {
			_, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
			return err
		}},
		{"CoreDNS Corefile", func() error {
			_, err := client.CoreV1().ConfigMaps(cm.Namespace).Create(ctx, cm, metav1.CreateOptions{})
			return err
		}},
		{"the kube-dns Service", func() error {
			_, err := client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
			return err
		}},
		{"the CoreDNS Deployment", func() error {
			_, err := client.AppsV1().Deployments(deploy.Namespace).Create(ctx, deploy, metav1.CreateOptions{})
			return err
		}},
		{"the provisioner's ClusterRole", func() error {
			_, err := client.RbacV1().ClusterRoles().Create(ctx, provRole, metav1.CreateOptions{})
			return err
		}},
		{"the provisioner's ClusterRoleBinding", func() error {
			_, err := client.RbacV1().ClusterRoleBindings().Create(ctx, provBinding, metav1.CreateOptions{})
			return err
		}},
	}
	for _, sc := range classes {
		creates = append(creates, struct {
			what   string
			create func() error
		}{"StorageClass " + sc.Name, func() error {
			_, err := client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{})
			return err
		}})
	}
	for _, cr := range creates {
		if err := cr.create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s: %w", cr.what, err)
		}
	}
	return nil
}

// coreDNSReady waits for CoreDNS to answer: its Deployment has an available
// replica (its readiness probe is the ready plugin, which passes once the
// kubernetes plugin has synced) and the kube-dns Service has its endpoint.
func (c *Cluster) coreDNSReady(ctx context.Context, client *kubernetes.Clientset) error {
	d, err := client.AppsV1().Deployments(metav1.NamespaceSystem).Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the CoreDNS Deployment: %w", err)
	}
	if d.Status.AvailableReplicas < 1 {
		return fmt.Errorf("CoreDNS has %d available replicas (kubectl -n kube-system describe pod -l k8s-app=kube-dns)", d.Status.AvailableReplicas)
	}
	return nil
}

// clusterDNSAddress is the kube-dns Service's address for status output.
func (c Config) clusterDNSAddress() string {
	return c.ClusterDNS + ":" + strconv.Itoa(53)
}

// RestrictedSecurityContext is a container security context that passes Pod
// Security "restricted", as the images' non-root user. The add-ons and the
// e2e tests' pods share it.
func RestrictedSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		ReadOnlyRootFilesystem:   ptr.To(true),
		RunAsNonRoot:             ptr.To(true),
		RunAsUser:                ptr.To[int64](images.NonRootUID),
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}
