// Command dispatch is the charm's hook binary. Juju runs it for every hook
// with JUJU_DISPATCH_PATH set to hooks/<name>.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "dispatch: not implemented yet")
	os.Exit(1)
}
