// Command fake-gpu-plugin is a kubelet device plugin that advertises N fake
// GPUs (nvidia.com/gpu by default) through the kubelet's real device-plugin
// gRPC API, so that the local cluster's real scheduler and kubelet do real GPU
// accounting without any GPU: a pod asking for more than N stays Pending with
// the scheduler's own message.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	p := &Plugin{}
	flag.StringVar(&p.ResourceName, "resource-name", "nvidia.com/gpu", "extended resource to advertise")
	flag.IntVar(&p.Count, "count", 2, "number of fake devices")
	flag.StringVar(&p.PluginDir, "plugin-dir", "/var/lib/kubelet/device-plugins", "the kubelet's device-plugin directory (holds kubelet.sock)")
	flag.StringVar(&p.SocketName, "socket-name", "modelguard-fake-gpu.sock", "this plugin's socket file name inside --plugin-dir")
	flag.DurationVar(&p.CheckInterval, "check-interval", time.Second, "how often to check that the kubelet still has our socket")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := log.New(os.Stderr, "", log.LstdFlags)
	if err := p.Run(ctx, logger.Printf); err != nil {
		fmt.Fprintln(os.Stderr, "fake-gpu-plugin:", err)
		os.Exit(1)
	}
}
