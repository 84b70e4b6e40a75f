// Command kube-apiserver is the real Kubernetes API server, built from the pinned
// k8s.io/kubernetes module so weft's tests run against the same code a cluster runs.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
