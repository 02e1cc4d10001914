package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeKubelet is the kubelet's side of device-plugin registration: a real
// gRPC Registration server on kubelet.sock in a temp dir.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	requests chan *pluginapi.RegisterRequest
}

func (k *fakeKubelet) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.requests <- req
	return &pluginapi.Empty{}, nil
}

func startFakeKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	lis, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatalf("listening as the kubelet: %v", err)
	}
	k := &fakeKubelet{requests: make(chan *pluginapi.RegisterRequest, 4)}
	srv := grpc.NewServer()
	pluginapi.RegisterRegistrationServer(srv, k)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return k
}

func (k *fakeKubelet) nextRegistration(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case req := <-k.requests:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin did not register with the kubelet within 10s")
		return nil
	}
}

// shortTempDir keeps socket paths under the 108-byte limit of unix sockets,
// which t.TempDir's long names can exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fgp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func startPlugin(t *testing.T, dir string, count int) (*Plugin, chan error) {
	t.Helper()
	p := &Plugin{ResourceName: "nvidia.com/gpu", Count: count, PluginDir: dir, SocketName: "fake.sock", CheckInterval: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, t.Logf) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the plugin did not stop within 10s of its context ending")
		}
	})
	return p, done
}

func dialPlugin(t *testing.T, dir string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "fake.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dialling the plugin: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func TestPluginRegistersAndAdvertisesDevices(t *testing.T) {
	dir := shortTempDir(t)
	kubelet := startFakeKubelet(t, dir)
	startPlugin(t, dir, 3)

	got := kubelet.nextRegistration(t)
	want := &pluginapi.RegisterRequest{Version: "v1beta1", Endpoint: "fake.sock", ResourceName: "nvidia.com/gpu", Options: &pluginapi.DevicePluginOptions{}}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("registration (-want +got):\n%s", diff)
	}

	client := dialPlugin(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatalf("ListAndWatch: %v", err)
	}
	list, err := stream.Recv()
	if err != nil {
		t.Fatalf("receiving the device list: %v", err)
	}
	wantDevices := &pluginapi.ListAndWatchResponse{Devices: []*pluginapi.Device{
		{ID: "fake-gpu-0", Health: "Healthy"}, {ID: "fake-gpu-1", Health: "Healthy"}, {ID: "fake-gpu-2", Health: "Healthy"},
	}}
	if diff := cmp.Diff(wantDevices, list, protocmp.Transform()); diff != "" {
		t.Errorf("device list (-want +got):\n%s", diff)
	}
}

func TestPluginAllocate(t *testing.T) {
	dir := shortTempDir(t)
	kubelet := startFakeKubelet(t, dir)
	startPlugin(t, dir, 2)
	kubelet.nextRegistration(t)
	client := dialPlugin(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tests := []struct {
		name     string
		ids      []string
		wantEnvs map[string]string
		wantCode codes.Code
	}{
		{name: "one device", ids: []string{"fake-gpu-1"},
			wantEnvs: map[string]string{"NVIDIA_VISIBLE_DEVICES": "fake-gpu-1", "MODELGUARD_FAKE_GPU": "true"}},
		{name: "two devices", ids: []string{"fake-gpu-0", "fake-gpu-1"},
			wantEnvs: map[string]string{"NVIDIA_VISIBLE_DEVICES": "fake-gpu-0,fake-gpu-1", "MODELGUARD_FAKE_GPU": "true"}},
		{name: "a device that does not exist", ids: []string{"fake-gpu-2"}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{
				ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tt.ids}},
			})
			if tt.wantCode != codes.OK {
				if status.Code(err) != tt.wantCode {
					t.Fatalf("Allocate error = %v, want code %v", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if len(resp.GetContainerResponses()) != 1 {
				t.Fatalf("got %d container responses, want 1", len(resp.GetContainerResponses()))
			}
			if diff := cmp.Diff(tt.wantEnvs, resp.GetContainerResponses()[0].GetEnvs()); diff != "" {
				t.Errorf("envs (-want +got):\n%s", diff)
			}
		})
	}
}

// The kubelet deletes every plugin socket when it restarts; the plugin must
// notice, serve again and register again, or the node loses its GPUs.
func TestPluginRegistersAgainAfterKubeletRestart(t *testing.T) {
	dir := shortTempDir(t)
	kubelet := startFakeKubelet(t, dir)
	startPlugin(t, dir, 1)
	kubelet.nextRegistration(t)

	if err := os.Remove(filepath.Join(dir, "fake.sock")); err != nil {
		t.Fatalf("removing the plugin socket as a restarting kubelet does: %v", err)
	}
	again := kubelet.nextRegistration(t)
	if again.GetResourceName() != "nvidia.com/gpu" {
		t.Errorf("second registration is for %q, want nvidia.com/gpu", again.GetResourceName())
	}
	if _, err := os.Stat(filepath.Join(dir, "fake.sock")); err != nil {
		t.Errorf("the plugin did not serve its socket again: %v", err)
	}
}

func TestPluginRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		p    Plugin
	}{
		{"negative count", Plugin{ResourceName: "nvidia.com/gpu", Count: -1, SocketName: "s.sock"}},
		{"resource without a domain", Plugin{ResourceName: "gpu", Count: 1, SocketName: "s.sock"}},
		{"socket name with a path", Plugin{ResourceName: "nvidia.com/gpu", Count: 1, SocketName: "a/b.sock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.p.Run(context.Background(), t.Logf); err == nil {
				t.Error("Run accepted a bad configuration")
			}
		})
	}
}
