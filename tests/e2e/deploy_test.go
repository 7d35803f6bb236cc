package e2e

import (
	"testing"

	"github.com/juju/dqlite-controller/tests/sim"
)

// juju deploy -n 3: whatever the hook interleaving, exactly one cluster with
// three voters forms (DESIGN.md: bootstrap-agent-id).
func TestDeploy_ThreeAtOnceFormsExactlyOneCluster(t *testing.T) {
	m := newModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	v := waitCluster(t, m)
	for u, s := range v.Nodes {
		t.Logf("%s: node %s %s role %s leader %s", u, s.NodeID, s.Address, s.Role, s.LeaderAddress())
	}
	waitActive(t, m)
}
