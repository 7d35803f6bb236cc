package sim

import (
	"slices"
	"strings"
	"testing"
)

// docs/juju.md#hook-order: the first unit runs install → relation-created → leader-elected →
// config-changed → start, and a single unit never sees relation-joined.
func TestDeploy_FirstUnitHookOrder(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	got := hookNames(m.History("toy/0"))
	want := []string{"install", "db-cluster-relation-created", "leader-elected", "config-changed", "start"}
	if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
		t.Fatalf("hooks of toy/0 = %v, want prefix %v", got, want)
	}
	// The toy leader writes app data in config-changed: that, and only
	// that, gives a single unit a relation-changed (docs/juju.md#relation-data), with no remote unit.
	for _, h := range got[len(want):] {
		if h != "db-cluster-relation-changed" {
			t.Errorf("single unit ran %s after start; want only app-data relation-changed", h)
		}
	}
	st := m.Status()
	if st.Leader != "toy/0" {
		t.Fatalf("leader = %q, want toy/0", st.Leader)
	}
	u, _ := st.Unit("toy/0")
	if u.Workload != "active" {
		t.Fatalf("workload = %q, want active (status-set applies)", u.Workload)
	}
	// docs/juju.md#hook-dispatch-and-environment: the environment of a hook, seen from inside the machine.
	envs := readEnvRecords(t, m, "toy/0")
	if len(envs) != len(got) {
		t.Fatalf("toy charm recorded %d hooks, the simulator ran %d", len(envs), len(got))
	}
	install := envs[0]
	for k, want := range map[string]string{
		"JUJU_DISPATCH_PATH":        "hooks/install",
		"JUJU_HOOK_NAME":            "install",
		"JUJU_UNIT_NAME":            "toy/0",
		"JUJU_CHARM_DIR":            "/var/lib/juju/agents/unit-toy-0/charm",
		"CHARM_DIR":                 "/var/lib/juju/agents/unit-toy-0/charm",
		"JUJU_MODEL_NAME":           "controller",
		"JUJU_AGENT_SOCKET_NETWORK": "unix",
		"JUJU_MACHINE_ID":           "0",
	} {
		if install[k] != want {
			t.Errorf("install: %s = %q, want %q", k, install[k], want)
		}
	}
	for _, k := range []string{"JUJU_CONTEXT_ID", "JUJU_AGENT_SOCKET_ADDRESS", "JUJU_MODEL_UUID", "JUJU_VERSION"} {
		if install[k] == "" {
			t.Errorf("install: %s is not set", k)
		}
	}
	if _, ok := install["JUJU_RELATION"]; ok {
		t.Errorf("install: JUJU_RELATION set outside a relation hook")
	}
	created := envs[1]
	if created["JUJU_RELATION"] != "db-cluster" || created["JUJU_RELATION_ID"] != "db-cluster:0" ||
		created["JUJU_REMOTE_APP"] != "toy" || created["JUJU_REMOTE_UNIT"] != "" {
		t.Errorf("relation-created env = %v", created)
	}
	if !strings.HasPrefix(install["PATH"], m.tools+":") {
		t.Errorf("PATH = %q: the hook tools must come first", install["PATH"])
	}
}

// docs/juju.md#hook-order: a new unit runs install → relation-created → config-changed → start,
// then joined+changed per peer; existing units run joined+changed for it.
func TestAddUnit_HookOrderOnBothSides(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	before := len(m.History("toy/0"))
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	newHooks := hookNames(m.History("toy/1"))
	wantPrefix := []string{"install", "db-cluster-relation-created", "config-changed", "start"}
	if len(newHooks) < len(wantPrefix) || !slices.Equal(newHooks[:len(wantPrefix)], wantPrefix) {
		t.Fatalf("hooks of toy/1 = %v, want prefix %v", newHooks, wantPrefix)
	}
	// App-data changes are handled before unit joins (resolver order,
	// testdata/fixtures/INDEX.md), and relation-changed always follows
	// relation-joined for the same unit (docs/juju.md#hook-order).
	i := slices.Index(newHooks, "db-cluster-relation-joined(toy/0)")
	if i < 0 || i+1 >= len(newHooks) || newHooks[i+1] != "db-cluster-relation-changed(toy/0)" {
		t.Fatalf("hooks of toy/1 = %v, want joined(toy/0) directly followed by changed(toy/0)", newHooks)
	}
	old := hookNames(m.History("toy/0"))[before:]
	if len(old) < 2 || old[0] != "db-cluster-relation-joined(toy/1)" || old[1] != "db-cluster-relation-changed(toy/1)" {
		t.Fatalf("hooks of toy/0 after add-unit = %v, want joined(toy/1) then changed(toy/1) first", old)
	}
	// The leader's app-data write reaches every unit, itself included, as
	// relation-changed with no remote unit (docs/juju.md#hook-order).
	for _, u := range []string{"toy/0", "toy/1"} {
		if !slices.Contains(hookNames(m.History(u)), "db-cluster-relation-changed") {
			t.Errorf("%s never ran an app-data relation-changed: %v", u, hookNames(m.History(u)))
		}
	}
	data := m.RelationData("db-cluster")
	if got := data["toy"]["members"]; !strings.Contains(got, "0=") || !strings.Contains(got, "1=") {
		t.Fatalf("app data members = %q, want both units", got)
	}
	if data["toy/1"]["ingress-address"] == "" {
		t.Errorf("Juju's ingress-address missing from toy/1's relation data: %v", data["toy/1"])
	}
}

// docs/juju.md#removing-a-unit: remove-unit runs departed on both sides (the leaving unit names
// itself as departing), then stop and remove; never relation-broken.
func TestRemoveUnit_DepartedBothSidesThenStopRemove(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	before0 := len(m.History("toy/0"))
	if err := m.RemoveUnit("toy/2", false); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	gone := m.History("toy/2")
	var tail []string
	for _, r := range gone {
		if r.Hook == "db-cluster-relation-departed" || r.Hook == "stop" || r.Hook == "remove" {
			tail = append(tail, r.Hook+"("+r.RemoteUnit+","+r.DepartingUnit+")")
		}
		if strings.HasSuffix(r.Hook, "relation-broken") {
			t.Errorf("peer relation got %s", r.Hook)
		}
	}
	want := []string{"db-cluster-relation-departed(toy/0,toy/2)", "db-cluster-relation-departed(toy/1,toy/2)", "stop(,)", "remove(,)"}
	if !slices.Equal(tail, want) {
		t.Fatalf("leaving unit's last hooks = %v, want %v", tail, want)
	}
	after := m.History("toy/0")[before0:]
	found := false
	for _, r := range after {
		if r.Hook == "db-cluster-relation-departed" && r.RemoteUnit == "toy/2" && r.DepartingUnit == "toy/2" {
			found = true
		}
	}
	if !found {
		t.Fatalf("toy/0 did not run departed for toy/2: %v", hookNames(after))
	}
	if _, ok := m.Status().Unit("toy/2"); ok {
		t.Fatalf("toy/2 still in status after removal")
	}
	if len(m.Status().Machines) != 2 {
		t.Fatalf("machines = %v, want the removed unit's machine gone", m.Status().Machines)
	}
}
