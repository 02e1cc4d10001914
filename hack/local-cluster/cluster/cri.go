package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criClient talks to our containerd through the CRI, the kubelet's own API.
func criClient(socket string) (criapi.RuntimeServiceClient, func(), error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to containerd at %s: %w", socket, err)
	}
	return criapi.NewRuntimeServiceClient(conn), func() { _ = conn.Close() }, nil
}

// criReady reports whether containerd's CRI plugin answers.
func criReady(ctx context.Context, socket string) error {
	client, closeConn, err := criClient(socket)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := client.Version(ctx, &criapi.VersionRequest{}); err != nil {
		return fmt.Errorf("CRI version: %w", err)
	}
	return nil
}

// removeAllPods stops and removes every container and pod sandbox through
// the CRI. Stopping a sandbox is what runs the CNI DEL (releasing its address
// and veth) and unmounts its network namespace and /dev/shm; removing the
// containers ends their shims. It returns how many sandboxes it removed.
func removeAllPods(ctx context.Context, socket string) (int, error) {
	client, closeConn, err := criClient(socket)
	if err != nil {
		return 0, err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	var errs []error
	containers, err := client.ListContainers(ctx, &criapi.ListContainersRequest{})
	if err != nil {
		return 0, fmt.Errorf("listing containers through the CRI: %w", err)
	}
	for _, c := range containers.GetContainers() {
		if _, err := client.StopContainer(ctx, &criapi.StopContainerRequest{ContainerId: c.GetId(), Timeout: 0}); err != nil {
			errs = append(errs, fmt.Errorf("stopping container %s: %w", c.GetId(), err))
		}
		if _, err := client.RemoveContainer(ctx, &criapi.RemoveContainerRequest{ContainerId: c.GetId()}); err != nil {
			errs = append(errs, fmt.Errorf("removing container %s: %w", c.GetId(), err))
		}
	}
	sandboxes, err := client.ListPodSandbox(ctx, &criapi.ListPodSandboxRequest{})
	if err != nil {
		return 0, errors.Join(append(errs, fmt.Errorf("listing pod sandboxes through the CRI: %w", err))...)
	}
	for _, s := range sandboxes.GetItems() {
		if _, err := client.StopPodSandbox(ctx, &criapi.StopPodSandboxRequest{PodSandboxId: s.GetId()}); err != nil {
			errs = append(errs, fmt.Errorf("stopping pod sandbox %s (%s/%s): %w", s.GetId(), s.GetMetadata().GetNamespace(), s.GetMetadata().GetName(), err))
		}
		if _, err := client.RemovePodSandbox(ctx, &criapi.RemovePodSandboxRequest{PodSandboxId: s.GetId()}); err != nil {
			errs = append(errs, fmt.Errorf("removing pod sandbox %s: %w", s.GetId(), err))
		}
	}
	return len(sandboxes.GetItems()), errors.Join(errs...)
}
