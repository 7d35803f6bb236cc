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

// Scope: a unit's hook context has no relation before the unit enters
// scope, and it enters scope (peers see it join) before its
// relation-created runs, even when that hook fails.
// juju/juju: internal/worker/uniter/relation/resolver.go
// (createdRelationsResolver: nothing before install), statetracker.go
// (SynchronizeScopes joins the relation, entering scope),
// runner/context/contextfactory.go (getContextRelations lists the joined
// relations only).
func TestScope_NoRelationBeforeScope_ScopeBeforeRelationCreated(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	envs := readEnvRecords(t, m, "toy/0")
	if got := envs[0]["RELATION_IDS"]; envs[0]["JUJU_HOOK_NAME"] != "install" || got != "[]" {
		t.Errorf("install: relation-ids = %q, want [] (the unit is not in scope yet)", got)
	}
	if got := envs[0]["RELATION_LIST_RC"]; got != "2" {
		t.Errorf("install: relation-list -r db-cluster:0 exit code %s, want 2 (relation not found)", got)
	}
	if got := envs[1]["RELATION_IDS"]; envs[1]["JUJU_HOOK_NAME"] != "db-cluster-relation-created" || got != `["db-cluster:0"]` {
		t.Errorf("relation-created: relation-ids = %q, want [\"db-cluster:0\"]", got)
	}

	// toy/1's relation-created fails: it is in scope all the same, so
	// toy/0 sees it join.
	if err := m.SetConfig(map[string]string{"fail-hook": "db-cluster-relation-created"}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := m.WaitFor(ctx, "toy/0 sees toy/1 join while toy/1's relation-created is in error", func(st Status) bool {
		u1, _ := st.Unit("toy/1")
		return u1.Workload == "error" && slices.Contains(hookNames(m.History("toy/0")), "db-cluster-relation-joined(toy/1)")
	})
	if err != nil {
		t.Fatal(err)
	}
	if data := m.RelationData("db-cluster")["toy/1"]; data["ingress-address"] == "" {
		t.Errorf("toy/1 entered scope without Juju's ingress-address: %v", data)
	}
}

// Departed before joined: with a departure and an arrival both pending, a
// unit runs the departure first, then the join (relation/resolver.go
// nextHookForRelation: pending changed, departed, application changed,
// joined, changed).
func TestResolver_DepartedBeforeJoined(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	before := len(m.History("toy/0"))
	m.mu.Lock()
	m.units["toy/0"].hold = true
	m.mu.Unlock()
	if err := m.RemoveUnit("toy/2", false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := m.WaitFor(ctx, "toy/2 gone and toy/3 in scope", func(Status) bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.units["toy/2"].life == lifeDead && m.relations[0].scope["toy/3"]
	})
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.units["toy/0"].hold = false
	m.notifyLocked()
	m.mu.Unlock()
	waitIdle(t, m)
	after := hookNames(m.History("toy/0")[before:])
	dep := slices.Index(after, "db-cluster-relation-departed(toy/2)")
	join := slices.Index(after, "db-cluster-relation-joined(toy/3)")
	if dep < 0 || join < 0 || dep > join {
		t.Fatalf("toy/0 ran %v; want departed(toy/2) before joined(toy/3)", after)
	}
}

// Caches: a member's bag is read once and kept across hooks until that
// member's own relation hook runs; the application bag is read once per
// hook (runner/context/cache.go RelationCache; contextfactory.go
// HookContext invalidates only the hook's remote unit).
func TestRelationCache_StaleMemberBagUntilItsHook(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	m.mu.Lock()
	m.units["toy/0"].hold = true
	m.mu.Unlock()
	get := func(h *hookInfo, args ...string) string {
		t.Helper()
		r := call(t, m, "toy/0", h, "relation-get", append([]string{"-r", "db-cluster:0"}, args...)...)
		if r.Code != 0 {
			t.Fatalf("relation-get %v: %s", args, r.Stderr)
		}
		return strings.TrimSpace(string(r.Stdout))
	}
	// toy/0 reads toy/1's bag in some hook: now cached.
	orig := get(&hookInfo{name: "update-status"}, "db-bind-address", "toy/1")
	if orig == "" {
		t.Fatal("toy/1 has no db-bind-address")
	}
	// toy/1 commits a new value (as its hook would).
	m.mu.Lock()
	r := m.relations[0]
	bag := map[string]map[string]string{"toy/1": r.unitData["toy/1"]}
	v := "10.99.99.99"
	applyDelta(bag, "toy/1", map[string]*string{"db-bind-address": &v})
	r.unitData["toy/1"] = bag["toy/1"]
	r.unitVer["toy/1"]++
	m.mu.Unlock()
	for _, h := range []string{"config-changed", "leader-elected", "update-status"} {
		if got := get(&hookInfo{name: h}, "db-bind-address", "toy/1"); got != orig {
			t.Errorf("%s reads toy/1's db-bind-address %q, want the cached %q (its changed hook has not run)", h, got, orig)
		}
	}
	if got := get(relHook(m, "changed", "toy/1"), "db-bind-address", "toy/1"); got != v {
		t.Errorf("relation-changed(toy/1) reads %q, want the fresh %q", got, v)
	}

	// The application bag: one read per hook.
	m.mu.Lock()
	u := m.units["toy/0"]
	hc := m.newContextLocked(u, &hookInfo{name: "update-status"})
	m.mu.Unlock()
	appGet := func(hc *hookContext) string {
		r := m.handle(toolRequest{Tool: "relation-get", Args: []string{"-r", "db-cluster:0", "--app", "members", "toy"}, ContextID: hc.id})
		return strings.TrimSpace(string(r.Stdout))
	}
	first := appGet(hc)
	m.mu.Lock()
	r.appData = map[string]string{"members": "changed"}
	r.appVer++
	m.mu.Unlock()
	if got := appGet(hc); got != first {
		t.Errorf("second read of the app bag in one hook = %q, want %q as first read", got, first)
	}
	m.mu.Lock()
	delete(m.contexts, hc.id)
	hc2 := m.newContextLocked(u, &hookInfo{name: "update-status"})
	m.mu.Unlock()
	if got := appGet(hc2); got != "changed" {
		t.Errorf("the next hook reads the app bag %q, want the new value", got)
	}
	m.mu.Lock()
	delete(m.contexts, hc2.id)
	m.mu.Unlock()
}

// Leadership: elections pick any eligible unit (whoever claims first wins
// in Juju: internal/worker/leadership/tracker.go), never the lowest number.
func TestElection_PicksAtRandom(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	won := map[string]bool{}
	m.mu.Lock()
	for i := 0; i < 60; i++ {
		m.leader = ""
		m.electLocked()
		won[m.leader] = true
	}
	m.mu.Unlock()
	if len(won) < 2 {
		t.Fatalf("60 elections all won by %v; want the winner to vary", won)
	}
}

// is-leader claims on every call, and once it said false it says false for
// the rest of the hook, even if the unit becomes leader again
// (runner/context/leader.go ensureLeader, isMinion).
func TestIsLeader_ClaimsEveryCallFalseSticks(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	m.mu.Lock()
	for _, u := range m.units {
		u.hold = true
	}
	hc := m.newContextLocked(m.units["toy/0"], &hookInfo{name: "update-status"})
	m.mu.Unlock()
	isLeader := func() string {
		r := m.handle(toolRequest{Tool: "is-leader", ContextID: hc.id})
		return strings.TrimSpace(string(r.Stdout))
	}
	if got := isLeader(); got != "True" {
		t.Fatalf("leader's is-leader = %s", got)
	}
	if err := m.MoveLeadership("toy/1"); err != nil {
		t.Fatal(err)
	}
	if got := isLeader(); got != "False" {
		t.Fatalf("is-leader after the lease moved = %s, want False", got)
	}
	if err := m.MoveLeadership("toy/0"); err != nil {
		t.Fatal(err)
	}
	if got := isLeader(); got != "False" {
		t.Fatalf("is-leader after leadership came back in the same hook = %s, want False (a false sticks)", got)
	}
	r := m.handle(toolRequest{Tool: "relation-set", Args: []string{"-r", "db-cluster:0", "--app", "k=v"}, ContextID: hc.id})
	if r.Code != 1 || string(r.Stderr) != fixture(t, "relation-set-error-app-non-leader.txt") {
		t.Errorf("relation-set --app by a minion: code %d %q", r.Code, r.Stderr)
	}
}

// A leader whose lease moves mid-hook, after it wrote application data,
// fails that hook: the controller checks leadership when the hook's
// changes are committed and commits nothing (apiserver/facades/agent/uniter
// CommitHookChanges with a leadership token; runner/context/context.go
// Flush). Retried, the hook runs as a minion.
func TestLeadershipLostMidHook_CommitFailsThenRetriedAsMinion(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true, AutoRetryHooks: 200 * time.Millisecond})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	m.MoveLeadershipAt("toy/0", "config-changed", "status-set")
	if err := m.SetConfig(map[string]string{"title": "moved"}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	var failed, retried bool
	for _, r := range m.History("toy/0") {
		if r.Hook != "config-changed" {
			continue
		}
		if r.ExitCode == 0 && strings.Contains(r.CommitError, `"toy/0" is not leader of "toy"`) {
			failed = true
		} else if failed && r.CommitError == "" {
			retried = true
		}
	}
	if !failed || !retried {
		t.Fatalf("toy/0's config-changed runs %+v: want one refused at commit, then one committed", m.History("toy/0"))
	}
	if m.Status().Leader != "toy/1" || countHook(m.History("toy/1"), "leader-elected") != 1 {
		t.Fatalf("leader %s; toy/1 hooks %v: want toy/1 leader after running leader-elected", m.Status().Leader, hookNames(m.History("toy/1")))
	}
	if !strings.Contains(m.UnitLog("toy/0"), "is not leader of") {
		t.Errorf("toy/0's log does not say why the commit failed")
	}
}

// Partition: the cut-off unit's agent loses the API: its running hook's
// tool calls fail and the hook is not committed, no hook runs while cut
// off, its leadership lapses once the lease expires and another unit runs
// leader-elected; healed, it runs the interrupted hook again and catches
// up.
func TestPartition_AgentLosesAPIAndLeadership(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if err := m.SetConfig(map[string]string{"slow-hook": "config-changed"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.WaitFor(ctx, "toy/0 running config-changed", func(st Status) bool {
		u, _ := st.Unit("toy/0")
		return u.Executing == "config-changed hook"
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.Partition("toy/0", true); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitFor(ctx, "toy/1 leads", func(st Status) bool { return st.Leader == "toy/1" }); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if countHook(m.History("toy/1"), "leader-elected") != 1 {
		t.Fatalf("toy/1 took over without leader-elected: %v", hookNames(m.History("toy/1")))
	}
	cut := len(m.History("toy/0"))
	if u, _ := m.Status().Unit("toy/0"); u.Agent != "lost" {
		t.Errorf("cut-off unit's agent = %q, want lost", u.Agent)
	}
	if !strings.Contains(m.UnitLog("toy/0"), "connection is shut down") {
		t.Errorf("the interrupted hook's tool calls did not fail: %s", tail(m.UnitLog("toy/0")))
	}
	if err := m.SetConfig(map[string]string{"slow-hook": "", "title": "while cut off"}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if got := len(m.History("toy/0")); got != cut {
		t.Fatalf("toy/0 ran hooks while cut off: %v", hookNames(m.History("toy/0")[cut:]))
	}
	if err := m.Partition("toy/0", false); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	after := m.History("toy/0")[cut:]
	if len(after) == 0 || after[0].Hook != "config-changed" || after[0].ExitCode != 0 {
		t.Fatalf("toy/0 after healing ran %v, want the interrupted config-changed again first", hookNames(after))
	}
	if m.Status().Leader != "toy/1" {
		t.Errorf("leader after healing = %s, want toy/1 (the lease moved)", m.Status().Leader)
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// Stop runs only on a started unit (internal/worker/uniter/resolver.go,
// case life.Dying: stop if started, then remove); a unit removed during
// install runs no relation-created either (createdRelationsResolver does
// nothing for a dying unit).
func TestRemoveUnit_BeforeStart_NoStopHook(t *testing.T) {
	m := newToyModel(t, Options{})
	if err := m.SetConfig(map[string]string{"slow-hook": "install"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.WaitFor(ctx, "toy/0 installing", func(st Status) bool {
		u, _ := st.Unit("toy/0")
		return u.Executing == "install hook"
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveUnit("toy/0", false); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitFor(ctx, "toy/0 gone", func(st Status) bool { _, ok := st.Unit("toy/0"); return !ok }); err != nil {
		t.Fatal(err)
	}
	if got, want := hookNames(m.History("toy/0")), []string{"install", "remove"}; !slices.Equal(got, want) {
		t.Fatalf("hooks of a unit removed during install = %v, want %v", got, want)
	}
}

// juju refresh: every unit's charm directory is swapped between hooks (the
// running service keeps going), then upgrade-charm and config-changed run,
// in that order, on every unit (internal/worker/uniter/resolver.go nextOp;
// operation/runhook.go Commit queues config-changed after upgrade-charm).
func TestRefresh_SwapsCharmThenUpgradeCharmThenConfigChanged(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	v2 := filepath.Join(t.TempDir(), "toycharm")
	if err := copyTree(m.opts.CharmDir, v2); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v2, "VERSION"), []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := map[string]int{"toy/0": len(m.History("toy/0")), "toy/1": len(m.History("toy/1"))}
	if err := m.Refresh(v2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	for u, n := range before {
		got := hookNames(m.History(u)[n:])
		if len(got) < 2 || got[0] != "upgrade-charm" || got[1] != "config-changed" {
			t.Errorf("%s after refresh ran %v, want upgrade-charm then config-changed first", u, got)
		}
		data, err := os.ReadFile(filepath.Join(m.MachineDir(u), "var-lib-juju", "agents", "unit-"+strings.ReplaceAll(u, "/", "-"), "charm", "VERSION"))
		if err != nil || string(data) != "2\n" {
			t.Errorf("%s's charm directory was not swapped: %q %v", u, data, err)
		}
	}
	out, _, err := m.Exec(context.Background(), "toy/0", m.tools+"/systemctl", "is-active", "toy")
	if err != nil || strings.TrimSpace(string(out)) != "active" {
		t.Errorf("toy service after refresh: %q %v", out, err)
	}
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if n := countHook(m.History("toy/2"), "upgrade-charm"); n != 0 {
		t.Errorf("a unit added after the refresh ran upgrade-charm %d times; it installs the new charm", n)
	}
}

// relation-get's target resolution and errors (jujuc/relation-get.go
// determineUnitOrAppName, Init): an application relation-changed with no
// argument reads the application bag; a bare application name without --app
// is refused; no target anywhere is an error; --app with a unit name reads
// that unit's application. The 3.6 text for a unit never in the relation;
// status-set --application is kept and shown by status.
func TestRelationGet_TargetsAndErrors_StatusSetApplication(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	m.mu.Lock()
	for _, u := range m.units {
		u.hold = true
	}
	m.mu.Unlock()
	members := m.RelationData("db-cluster")["toy"]["members"]
	appChanged := &hookInfo{name: "db-cluster-relation-changed", rel: m.relations[0], remoteApp: "toy"}
	r := call(t, m, "toy/1", appChanged, "relation-get", "members")
	expectOut(t, "relation-get members in an app relation-changed", r, 0, members+"\n", "")
	r = call(t, m, "toy/1", appChanged, "relation-get", "--app", "members", "toy/0")
	expectOut(t, "relation-get --app members toy/0", r, 0, members+"\n", "")
	r = call(t, m, "toy/1", appChanged, "relation-get", "-", "toy")
	expectOut(t, "relation-get - toy", r, 2, "", "ERROR expected unit name, got application name \"toy\"\n")
	r = call(t, m, "toy/1", appChanged, "relation-get", "-", "toy/x")
	expectOut(t, "relation-get - toy/x", r, 2, "", "ERROR invalid unit name \"toy/x\"\n")
	r = call(t, m, "toy/1", &hookInfo{name: "update-status"}, "relation-get", "-r", "db-cluster:0", "members")
	expectOut(t, "relation-get without a target outside a relation hook", r, 2, "", "ERROR no unit or application specified\n")
	r = call(t, m, "toy/1", &hookInfo{name: "update-status"}, "relation-get", "members")
	expectOut(t, "relation-get without -r outside a relation hook", r, 2, "", "ERROR no relation id specified\n")
	r = call(t, m, "toy/1", &hookInfo{name: "update-status"}, "relation-get", "-r", "db-cluster:0", "-", "toy/9")
	expectOut(t, "relation-get of a unit never in the relation (4.x)", r, 1, "", fixture(t, "relation-get-error-unknown-unit-4.x.txt"))

	r = call(t, m, "toy/1", &hookInfo{name: "update-status"}, "status-set", "--application", "active", "x")
	expectOut(t, "status-set --application by a minion", r, 1, "", fixture(t, "status-set-error-application-non-leader.txt"))
	r = call(t, m, "toy/0", &hookInfo{name: "update-status"}, "status-set", "--application", "blocked", "fix me")
	expectOut(t, "status-set --application by the leader", r, 0, "", "")
	if st := m.Status(); st.AppStatus != "blocked" || st.AppMessage != "fix me" || !strings.Contains(m.StatusTable(), "fix me") {
		t.Errorf("application status = %q %q; table:\n%s", st.AppStatus, st.AppMessage, m.StatusTable())
	}
	r = call(t, m, "toy/0", &hookInfo{name: "update-status"}, "status-get", "--application")
	expectOut(t, "status-get --application", r, 0, "blocked\n", "")
}

// Juju 3.6 mode: JUJU_VERSION 3.6.x, private-address in relation data,
// and 3.6's relation-get error for a unit never in the relation.
func TestJuju36_EnvRelationDataAndErrors(t *testing.T) {
	m := newToyModel(t, Options{Juju36: true})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if v := readEnvRecords(t, m, "toy/0")[0]["JUJU_VERSION"]; !strings.HasPrefix(v, "3.6.") {
		t.Errorf("JUJU_VERSION = %q, want 3.6.x", v)
	}
	if data := m.RelationData("db-cluster")["toy/0"]; data["private-address"] == "" || data["private-address"] != data["ingress-address"] {
		t.Errorf("3.6 relation data %v: want private-address equal to ingress-address", data)
	}
	m.mu.Lock()
	m.units["toy/0"].hold = true
	m.mu.Unlock()
	r := call(t, m, "toy/0", &hookInfo{name: "update-status"}, "relation-get", "-r", "db-cluster:0", "-", "toy/9")
	want := "ERROR cannot read settings for unit \"toy/9\" in relation \"toy:db-cluster\": unit \"toy/9\": settings not found\n"
	expectOut(t, "3.6 relation-get of an unknown unit", r, 1, "", want)
}
