// Command pause is the local cluster's pod sandbox process: the first process
// of every pod, which holds the pod's namespaces open. The upstream pause
// image cannot be pulled here, so the harness builds this one into a
// single-layer image and names it as containerd's sandbox_image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			// As PID 1 of a pod that shares its PID namespace, pause inherits
			// orphans; reap them so they do not linger as zombies.
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
