package e2e

import (
	"testing"

	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// juju deploy -n 3: whatever the hook interleaving, exactly one cluster with
// three voters forms (docs/architecture.md: bootstrap-agent-id). One run, made as
// unkind as the simulator allows: Juju 3.6 (metadata.yaml allows it:
// unfiltered ingress lists, private-address in relation data, JUJU_VERSION
// 3.6.x, 3.6 error texts), and the first leader loses its lease in the
// middle of the hook in which it chooses the bootstrap node (after its
// relation-set --app), so Juju refuses that hook's application data at
// commit and a random unit leads and chooses.
func TestDeploy_ThreeAtOnceFormsExactlyOneCluster(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{Juju36: true, FirstUnitLeads: true})
	m.MoveLeadershipAt(app+"/0", "db-cluster-relation-created", "status-set")
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	refused := false
	for _, r := range m.History(app + "/0") {
		refused = refused || r.CommitError != ""
	}
	if !refused {
		t.Fatalf("the fault did not fire: %s/0's hooks %+v", app, m.History(app+"/0"))
	}
	v := simtest.WaitCluster(t, m)
	t.Logf("Juju leader %s", m.Status().Leader)
	for u, s := range v.Nodes {
		t.Logf("%s: node %s %s role %s leader %s", u, s.NodeID, s.Address, s.Role, s.LeaderAddress())
	}
	simtest.WaitActive(t, m)
	if got := m.RelationData("db-cluster")[app+"/1"]["private-address"]; got == "" {
		t.Errorf("Juju 3.6 mode: no private-address in %s/1's relation data", app)
	}
}
