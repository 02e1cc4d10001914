package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Plugin advertises Count fake devices of ResourceName to the kubelet through
// the real device-plugin API, so that the real scheduler and kubelet do the
// GPU accounting. There is no hardware behind the devices: Allocate only
// returns environment variables naming the devices it was given.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer

	ResourceName string
	Count        int
	// PluginDir is the kubelet's device-plugin directory, which holds the
	// kubelet's registration socket (kubelet.sock) and the plugins' sockets.
	PluginDir string
	// SocketName is this plugin's socket file inside PluginDir.
	SocketName string
	// CheckInterval is how often the plugin looks for its socket; the kubelet
	// deletes every plugin socket when it restarts, and the plugin then serves
	// and registers again.
	CheckInterval time.Duration

	devices []*pluginapi.Device
	known   map[string]bool
}

// deviceID names the i-th fake device.
func deviceID(i int) string { return fmt.Sprintf("fake-gpu-%d", i) }

func (p *Plugin) init() error {
	if p.Count < 0 {
		return fmt.Errorf("device count %d is negative", p.Count)
	}
	if p.ResourceName == "" || !strings.Contains(p.ResourceName, "/") {
		return fmt.Errorf("resource name %q is not an extended resource name like nvidia.com/gpu", p.ResourceName)
	}
	if p.SocketName == "" || strings.Contains(p.SocketName, "/") {
		return fmt.Errorf("socket name %q must be a plain file name", p.SocketName)
	}
	if p.CheckInterval <= 0 {
		p.CheckInterval = time.Second
	}
	p.devices = make([]*pluginapi.Device, p.Count)
	p.known = make(map[string]bool, p.Count)
	for i := range p.devices {
		p.devices[i] = &pluginapi.Device{ID: deviceID(i), Health: pluginapi.Healthy}
		p.known[deviceID(i)] = true
	}
	return nil
}

// GetDevicePluginOptions says the plugin needs no PreStartContainer call and
// offers no preferred allocation: all fake devices are alike.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the device list once; the fake devices never change
// health, so the stream then stays open until the kubelet or the plugin ends
// it.
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return fmt.Errorf("sending the device list: %w", err)
	}
	<-stream.Context().Done()
	return nil
}

// Allocate hands each container the devices the kubelet picked, as
// NVIDIA_VISIBLE_DEVICES, the variable the NVIDIA runtime reads.
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, creq := range req.GetContainerRequests() {
		for _, id := range creq.GetDevicesIds() {
			if !p.known[id] {
				return nil, status.Errorf(codes.InvalidArgument, "unknown device %q: this plugin has %d devices named fake-gpu-0..", id, p.Count)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{
				"NVIDIA_VISIBLE_DEVICES": strings.Join(creq.GetDevicesIds(), ","),
				"MODELGUARD_FAKE_GPU":    "true",
			},
		})
	}
	return resp, nil
}

// Run serves the plugin and registers it with the kubelet until ctx ends,
// serving and registering again whenever the kubelet removes the socket (as it
// does when it restarts).
func (p *Plugin) Run(ctx context.Context, logf func(format string, args ...any)) error {
	if err := p.init(); err != nil {
		return err
	}
	socket := filepath.Join(p.PluginDir, p.SocketName)
	for {
		srv, err := p.serve(socket)
		if err != nil {
			return err
		}
		if err := p.register(ctx); err != nil {
			srv.Stop()
			return err
		}
		logf("Registered %d devices of %s with the kubelet through %s", p.Count, p.ResourceName, socket)

		restart := p.waitForSocketLoss(ctx, socket)
		srv.Stop()
		if !restart {
			_ = os.Remove(socket)
			return nil
		}
		logf("Socket %s disappeared (kubelet restarted?); serving and registering again", socket)
	}
}

func (p *Plugin) serve(socket string) (*grpc.Server, error) {
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing the stale socket %s: %w", socket, err)
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", socket, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	var started sync.WaitGroup
	started.Add(1)
	go func() {
		started.Done()
		_ = srv.Serve(lis)
	}()
	started.Wait()
	return srv, nil
}

func (p *Plugin) register(ctx context.Context) error {
	kubeletSocket := filepath.Join(p.PluginDir, filepath.Base(pluginapi.KubeletSocket))
	conn, err := grpc.NewClient("unix://"+kubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to the kubelet at %s: %w", kubeletSocket, err)
	}
	defer conn.Close()
	// The kubelet may be starting; retry within a bound rather than forever.
	regCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req := &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     p.SocketName,
		ResourceName: p.ResourceName,
		Options:      &pluginapi.DevicePluginOptions{},
	}
	for {
		_, err = pluginapi.NewRegistrationClient(conn).Register(regCtx, req, grpc.WaitForReady(true))
		if err == nil {
			return nil
		}
		if regCtx.Err() != nil {
			return fmt.Errorf("registering %s with the kubelet at %s: %w", p.ResourceName, kubeletSocket, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitForSocketLoss returns true when the socket is gone (serve again) and
// false when ctx ends (stop).
func (p *Plugin) waitForSocketLoss(ctx context.Context, socket string) bool {
	tick := time.NewTicker(p.CheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
			if _, err := os.Stat(socket); errors.Is(err, os.ErrNotExist) {
				return true
			}
		}
	}
}
