// Command cumulusdb is the CumulusDB server. The SQL server arrives with the
// storage-engine and SQL issues; until then this placeholder says so, so
// that `cumulus image` with no argument builds and boots something real.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Printf("cumulusdb: placeholder server (the SQL server is not built yet); GOMAXPROCS=%d, %d args\n", runtime.GOMAXPROCS(0), len(os.Args)-1)
}
