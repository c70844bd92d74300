// Command etcd is etcd's server, built from go.etcd.io/etcd/server/v3 (etcd's own main
// module has relative replace directives, so it cannot be built from the module proxy).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
