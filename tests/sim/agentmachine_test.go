package sim

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// An agent machine is a machine of its own (namespace, NICs in the chosen
// subnets only, its own /var/lib/juju with agent.conf), hosts no unit, and
// does not stand in the way of juju bind; the api extra binding behaves
// like Juju's: bind runs config-changed on every unit and moves the agent
// addresses Juju would hand a new machine to the bound space.
func TestAgentMachine_OwnNamespaceAgentConfAndAPIBinding(t *testing.T) {
	m := newToyModel(t, Options{
		Subnets:        []SubnetSpec{{Name: "data", Space: "data"}, {Name: "mgmt", Space: "mgmt"}},
		DefaultSubnets: []string{"data", "mgmt"},
		Bindings:       map[string]string{"db-cluster": "data"},
	})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)

	// api is bound to the default space alpha, where no machine has an
	// address: Juju's provisioner would hand out every address.
	all := m.ControllerAgentAddresses()
	if len(all) != 4 || !strings.HasSuffix(all[0], ":17070") {
		t.Fatalf("agent addresses before the bind = %v, want the 4 addresses of 2 machines on port 17070", all)
	}
	id, err := m.AddAgentMachine(AgentMachineSpec{Subnets: []string{"mgmt"}, NoAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	var st MachineStatus
	for _, mc := range m.Status().Machines {
		if mc.ID == id {
			st = mc
		}
	}
	if !st.Agent || len(st.Addresses) != 1 {
		t.Fatalf("agent machine status %+v, want an agent machine with one (mgmt) address", st)
	}
	if got := m.AgentMachines(); !slices.Equal(got, []int{id}) {
		t.Errorf("AgentMachines = %v, want [%d]", got, id)
	}
	if len(m.Status().Units) != 2 {
		t.Errorf("the agent machine must not host a unit: %v", m.Status().UnitNames())
	}
	got, err := m.AgentAPIAddresses(id)
	if err != nil || !slices.Equal(got, all) {
		t.Fatalf("agent.conf apiaddresses = %v, %v; want the seeds %v", got, err, all)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, errOut, err := m.ExecMachine(ctx, id, "cat", AgentConfigPathOnMachine(id))
	if err != nil || !strings.Contains(string(out), "tag: machine-") || !strings.Contains(string(out), all[0]) {
		t.Fatalf("agent.conf seen on the machine: %q %q %v", out, errOut, err)
	}
	out, _, err = m.ExecMachine(ctx, id, "ip", "-o", "-4", "addr", "show", "scope", "global")
	if err != nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), st.Addresses[0]+"/") {
		t.Fatalf("the agent machine's global addresses: %q (%v), want only %s", out, err, st.Addresses[0])
	}

	before := map[string]int{}
	for _, u := range m.Status().UnitNames() {
		before[u] = countHook(m.History(u), "config-changed")
	}
	if err := m.Bind("api", "mgmt"); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	for _, u := range m.Status().UnitNames() {
		if n := countHook(m.History(u), "config-changed"); n != before[u]+1 {
			t.Errorf("%s ran config-changed %d times after bind api=mgmt, want once", u, n-before[u])
		}
	}
	mgmt := m.ControllerAgentAddresses()
	if len(mgmt) != 2 {
		t.Fatalf("agent addresses after the bind = %v, want one mgmt address per machine", mgmt)
	}
	for _, a := range mgmt {
		if !slices.Contains(all, a) {
			t.Errorf("%s is not one of the machines' addresses %v", a, all)
		}
	}
	netns := st.NetNS
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, netns)); err == nil {
		t.Errorf("agent machine namespace %s left behind", netns)
	}
}
