package sim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yamlv2 "gopkg.in/yaml.v2"
)

// fixture reads a Juju hook-tool output sample (testdata/fixtures; its
// INDEX.md says where each comes from).
func fixture(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// call runs a hook tool for unit as if from inside hook h.
func call(t *testing.T, m *Model, unit string, h *hookInfo, tool string, args ...string) toolResponse {
	t.Helper()
	m.mu.Lock()
	u := m.units[unit]
	if u == nil {
		m.mu.Unlock()
		t.Fatalf("no unit %s", unit)
	}
	hc := m.newContextLocked(u, h)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.contexts, hc.id)
		m.mu.Unlock()
	}()
	return m.handle(toolRequest{Tool: tool, Args: args, ContextID: hc.id})
}

func relHook(m *Model, name, remote string) *hookInfo {
	return &hookInfo{name: "db-cluster-relation-" + name, rel: m.relations[0], remoteUnit: remote, remoteApp: m.app}
}

func expectOut(t *testing.T, what string, r toolResponse, code int, stdout, stderr string) {
	t.Helper()
	if r.Code != code || string(r.Stdout) != stdout || string(r.Stderr) != stderr {
		t.Errorf("%s: got code %d stdout %q stderr %q; want code %d stdout %q stderr %q",
			what, r.Code, r.Stdout, r.Stderr, code, stdout, stderr)
	}
}

// docs/juju.md "Hook tools" and testdata/fixtures: outputs and error texts of the hook tools, byte
// for byte where the fixture's values can be reproduced.
func TestHookTools_OutputsMatchJujuFixtures(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	// The settings of the jujuc test suite (jujuctesting/suite.go).
	m.mu.Lock()
	m.options = map[string]configOption{
		"monsters": {Type: "boolean", Default: false}, "spline-reticulation": {Type: "float", Default: 45.0},
		"title": {Type: "string", Default: "My Title"}, "username": {Type: "string", Default: "admin001"},
		"empty": {Type: "string"},
	}
	m.config = map[string]any{}
	m.mu.Unlock()
	h := &hookInfo{name: "config-changed"}
	expectOut(t, "config-get --format json", call(t, m, "toy/0", h, "config-get", "--format", "json"), 0, fixture(t, "config-get-json-all.txt"), "")
	expectOut(t, "config-get --all --format json", call(t, m, "toy/0", h, "config-get", "--all", "--format", "json"), 0, fixture(t, "config-get-json-all-flag.txt"), "")
	expectOut(t, "config-get --format json spline-reticulation", call(t, m, "toy/0", h, "config-get", "--format", "json", "spline-reticulation"), 0, fixture(t, "config-get-json-key-int-test.txt"), "")
	expectOut(t, "config-get --format json monsters", call(t, m, "toy/0", h, "config-get", "--format", "json", "monsters"), 0, fixture(t, "config-get-json-key-bool-test.txt"), "")
	expectOut(t, "config-get --format json missing", call(t, m, "toy/0", h, "config-get", "--format", "json", "missing"), 0, fixture(t, "config-get-json-missing-key-test.txt"), "")
	expectOut(t, "config-get monsters", call(t, m, "toy/0", h, "config-get", "monsters"), 0, fixture(t, "config-get-plain-key-bool-test.txt"), "")
	expectOut(t, "config-get missing", call(t, m, "toy/0", h, "config-get", "missing"), 0, fixture(t, "config-get-plain-missing-key-test.txt"), "")

	expectOut(t, "is-leader (leader)", call(t, m, "toy/0", h, "is-leader"), 0, fixture(t, "is-leader-plain-true-test.txt"), "")
	expectOut(t, "is-leader (follower)", call(t, m, "toy/1", h, "is-leader"), 0, fixture(t, "is-leader-plain-false-test.txt"), "")
	expectOut(t, "is-leader --format=json", call(t, m, "toy/0", h, "is-leader", "--format=json"), 0, fixture(t, "is-leader-json-true.txt"), "")
	expectOut(t, "is-leader --format=json (follower)", call(t, m, "toy/1", h, "is-leader", "--format=json"), 0, fixture(t, "is-leader-json-false.txt"), "")

	expectOut(t, "network-get unknown", call(t, m, "toy/0", h, "network-get", "unknown"), 1, "", fixture(t, "network-get-error-unknown-binding.txt"))
	expectOut(t, "relation-set --app by a follower", call(t, m, "toy/1", relHook(m, "changed", "toy/0"), "relation-set", "--app", "foo=bar"), 1, "", fixture(t, "relation-set-error-app-non-leader.txt"))
	expectOut(t, "status-set --application by a follower", call(t, m, "toy/1", h, "status-set", "--application", "maintenance", "x"), 1, "", fixture(t, "status-set-error-application-non-leader.txt"))
	expectOut(t, "relation-get -r burble:123", call(t, m, "toy/0", h, "relation-get", "-r", "burble:123"), 2, "", fixture(t, "relation-get-error-unknown-relation-test.txt"))
	expectOut(t, "relation-get of an unknown unit", call(t, m, "toy/0", relHook(m, "changed", "toy/1"), "relation-get", "-", "foo/9"), 1, "", fixture(t, "relation-get-error-unknown-unit-4.x.txt"))
	expectOut(t, "relation-ids --format json z", call(t, m, "toy/0", h, "relation-ids", "--format", "json", "z"), 0, fixture(t, "relation-ids-json-empty-test.txt"), "")
	expectOut(t, "relation-ids --format json db-cluster", call(t, m, "toy/0", h, "relation-ids", "--format", "json", "db-cluster"), 0, "[\"db-cluster:0\"]\n", "")
	expectOut(t, "relation-ids db-cluster", call(t, m, "toy/0", h, "relation-ids", "db-cluster"), 0, "db-cluster:0\n", "")
	expectOut(t, "relation-list --format=json", call(t, m, "toy/0", relHook(m, "changed", "toy/1"), "relation-list", "--format=json"), 0, "[\"toy/1\"]\n", "")
	expectOut(t, "relation-list outside relation hook", call(t, m, "toy/0", h, "relation-list"), 2, "", "ERROR no relation id specified\n")
	expectOut(t, "status-set bad status", call(t, m, "toy/0", h, "status-set", "happy"), 2, "", "ERROR invalid status \"happy\", expected one of [maintenance blocked waiting active]\n")
	expectOut(t, "unknown flag", call(t, m, "toy/0", h, "is-leader", "--bogus"), 2, "", "ERROR flag provided but not defined: --bogus\n")

	// relation-get: JSON of a bag is compact with sorted keys; a missing
	// key is null in JSON and nothing in smart (fixtures).
	rg := call(t, m, "toy/0", relHook(m, "changed", "toy/1"), "relation-get", "--format=json", "-", "toy/1")
	var bag map[string]string
	if err := json.Unmarshal(rg.Stdout, &bag); err != nil || bag["agent-id"] != "1" || bag["ingress-address"] == "" {
		t.Errorf("relation-get --format=json - toy/1 = %q (%v)", rg.Stdout, err)
	}
	expectOut(t, "relation-get missing json", call(t, m, "toy/0", relHook(m, "changed", "toy/1"), "relation-get", "missing", "toy/1", "--format", "json"), 0, fixture(t, "relation-get-key-json-missing-test.txt"), "")
	expectOut(t, "relation-get missing plain", call(t, m, "toy/0", relHook(m, "changed", "toy/1"), "relation-get", "ker-plunk"), 0, fixture(t, "relation-get-key-plain-missing-test.txt"), "")
	expectOut(t, "relation-get agent-id (default unit = remote)", call(t, m, "toy/0", relHook(m, "changed", "toy/1"), "relation-get", "agent-id"), 0, "1\n", "")
	// Followers may read their own application's peer data (docs/juju.md#hook-tools).
	if r := call(t, m, "toy/1", relHook(m, "changed", ""), "relation-get", "--app", "--format=json", "-", "toy"); r.Code != 0 || !strings.Contains(string(r.Stdout), "members") {
		t.Errorf("follower relation-get --app = %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
}

// docs/juju.md#addresses-and-bindings: bind-addresses list every address of the bound space; Juju 4's
// ingress-addresses hold only the best scope tier; egress is its /32.
func TestNetworkGet_ShapesAndScopeTiers(t *testing.T) {
	m := newToyModel(t, Options{Subnets: []SubnetSpec{
		{Name: "a4", Space: "alpha"}, {Name: "a6", Space: "alpha", IPv6: true}, {Name: "b4", Space: "beta"},
	}, DefaultSubnets: []string{"a4", "a6", "b4"}})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	m.mu.Lock()
	mc := m.units["toy/0"].machine
	v4, v6, b4 := mc.nics[0], mc.nics[1], mc.nics[2]
	m.mu.Unlock()
	h := &hookInfo{name: "config-changed"}
	r := call(t, m, "toy/0", h, "network-get", "db-cluster", "--format=json")
	host4 := v4.addr.String()
	want := fmt.Sprintf(`{"bind-addresses":[{"mac-address":%q,"interface-name":"eth0","addresses":[{"hostname":%q,"value":%q,"cidr":%q}]},`+
		`{"mac-address":%q,"interface-name":"eth1","addresses":[{"hostname":%q,"value":%q,"cidr":%q}]}],"egress-subnets":[%q],"ingress-addresses":[%q]}`+"\n",
		v4.mac, host4, host4, v4.subnet.prefix.String(), v6.mac, v6.addr.String(), v6.addr.String(), v6.subnet.prefix.String(), host4+"/32", host4)
	expectOut(t, "network-get db-cluster --format=json", r, 0, want, "")
	// An extra binding follows its own space (metadata extra-bindings).
	expectOut(t, "network-get api (default space)", call(t, m, "toy/0", h, "network-get", "api", "--ingress-address"), 0, host4+"\n", "")
	expectOut(t, "network-get --ingress-address", call(t, m, "toy/0", h, "network-get", "db-cluster", "--ingress-address"), 0, host4+"\n", "")
	expectOut(t, "network-get --bind-address", call(t, m, "toy/0", h, "network-get", "db-cluster", "--bind-address"), 0, host4+"\n", "")
	expectOut(t, "network-get --egress-subnets", call(t, m, "toy/0", h, "network-get", "db-cluster", "--egress-subnets"), 0, host4+"/32\n", "")
	expectOut(t, "network-get two flags", call(t, m, "toy/0", h, "network-get", "db-cluster", "--ingress-address", "--bind-address"), 0,
		fmt.Sprintf("bind-address: %s\ningress-address: %s\n", host4, host4), "")
	// The YAML form carries the legacy duplicate keys (INDEX.md).
	y := call(t, m, "toy/0", h, "network-get", "db-cluster")
	var doc map[string]any
	if err := yamlv2.Unmarshal(y.Stdout, &doc); err != nil {
		t.Fatalf("network-get YAML: %v\n%s", err, y.Stdout)
	}
	for _, key := range []string{"macaddress:", "interfacename:", "    address: " + host4, "mac-address:", "ingress-addresses:\n- " + host4} {
		if !strings.Contains(string(y.Stdout), key) {
			t.Errorf("network-get YAML lacks %q:\n%s", key, y.Stdout)
		}
	}
	// Binding to beta moves everything to the beta address.
	if err := m.Bind("db-cluster", "beta"); err != nil {
		t.Fatal(err)
	}
	expectOut(t, "network-get after bind", call(t, m, "toy/0", h, "network-get", "db-cluster", "--ingress-address"), 0, b4.addr.String()+"\n", "")
	expectOut(t, "network-get api after binding db-cluster", call(t, m, "toy/0", h, "network-get", "api", "--ingress-address"), 0, host4+"\n", "")
	waitIdle(t, m)
	if got := m.RelationData("db-cluster")["toy/0"]["ingress-address"]; got != b4.addr.String() {
		t.Errorf("ingress-address in relation data after bind+config-changed = %q, want %q (docs/juju.md#relation-data)", got, b4.addr)
	}
}

// docs/juju.md#addresses-and-bindings: two local-cloud IPv4 addresses in the bound space are both in Juju
// 4's ingress tier; Juju 3.6 lists every address of the space.
func TestNetworkGet_MultiAddressIngress4vs36(t *testing.T) {
	for _, j36 := range []bool{false, true} {
		t.Run(fmt.Sprintf("juju36=%v", j36), func(t *testing.T) {
			m := newToyModel(t, Options{Juju36Ingress: j36, Subnets: []SubnetSpec{
				{Name: "a", Space: "alpha"}, {Name: "b", Space: "alpha"}, {Name: "c", Space: "alpha", IPv6: true},
			}, DefaultSubnets: []string{"a", "b", "c"}})
			if _, err := m.Deploy(1); err != nil {
				t.Fatal(err)
			}
			waitIdle(t, m)
			r := call(t, m, "toy/0", &hookInfo{name: "start"}, "network-get", "db-cluster", "--format=json")
			var info struct {
				Bind []struct {
					Addresses []struct{ Hostname, Value string }
				} `json:"bind-addresses"`
				Ingress []string `json:"ingress-addresses"`
			}
			if err := json.Unmarshal(r.Stdout, &info); err != nil {
				t.Fatalf("%v: %s", err, r.Stdout)
			}
			m.mu.Lock()
			nics := m.units["toy/0"].machine.nics
			m.mu.Unlock()
			a, b := nics[0].addr, nics[1].addr
			if b.Less(a) {
				a, b = b, a
			}
			want := []string{a.String(), b.String()}
			if j36 {
				want = append(want, nics[2].addr.String())
			}
			if !slices.Equal(info.Ingress, want) {
				t.Errorf("ingress-addresses = %v, want %v", info.Ingress, want)
			}
			if len(info.Bind) != 3 {
				t.Errorf("bind-addresses has %d devices, want 3", len(info.Bind))
			}
			if hn := info.Bind[0].Addresses[0].Hostname; (hn == "") != j36 {
				t.Errorf("hostname = %q: Juju 4 puts the IP there, 3.6 leaves it empty", hn)
			}
		})
	}
}
