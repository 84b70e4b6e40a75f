// Command etcd is the etcd server the pinned kube-apiserver is released with, built from
// the same module graph so both come from one go.sum.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
