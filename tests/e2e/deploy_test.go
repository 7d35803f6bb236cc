package e2e

import (
	"fmt"
	"testing"

	"github.com/juju/dqlite-controller/tests/sim"
)

// juju deploy -n 3: whatever the hook interleaving, exactly one cluster with
// three voters forms (DESIGN.md: bootstrap-agent-id).
// The Juju leader is a random unit of the batch, as in Juju (the default).
func TestDeploy_ThreeAtOnceFormsExactlyOneCluster(t *testing.T) {
	for i := 0; i < 2; i++ {
		t.Run(fmt.Sprintf("try%d", i), func(t *testing.T) {
			m := newModel(t, sim.Options{})
			if _, err := m.Deploy(3); err != nil {
				t.Fatal(err)
			}
			waitIdle(t, m)
			v := waitCluster(t, m)
			t.Logf("Juju leader %s", m.Status().Leader)
			for u, s := range v.Nodes {
				t.Logf("%s: node %s %s role %s leader %s", u, s.NodeID, s.Address, s.Role, s.LeaderAddress())
			}
			waitActive(t, m)
		})
	}
}
