package nodeagent

import (
	"fmt"
	"os"
	"testing"

	"github.com/tether-dev/tether/internal/nodeagent/podnet"
)

// TestMain lets the test binary act as the pod init (`tether pod-init`):
// as root, the runtime starts containers through os.Executable().
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "pod-init" {
		err := podnet.Main(os.Args[2:])
		fmt.Fprintln(os.Stderr, err)
		os.Exit(127)
	}
	os.Exit(m.Run())
}
