package sim

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// obsoleteIs checks the existing and the obsolete revisions of the secret
// labelled ca.
func obsoleteIs(t *testing.T, m *Model, when string, existing, obsolete []int) {
	t.Helper()
	e, o, ok := m.ObsoleteSecretRevisions("ca")
	if !ok || !slices.Equal(e, existing) || !slices.Equal(o, obsolete) {
		t.Fatalf("%s: revisions %v, obsolete %v (found %v); want %v and %v", when, e, o, ok, existing, obsolete)
	}
}

// Obsolete revisions and secret-remove, as Juju does them (each point
// with its source in secretremove.go):
//   - a revision becomes obsolete only when it is not the latest and no
//     consumer tracks it, marked when a revision is added or a consumer's
//     tracked revision saved (domain/secret/state markObsoleteRevisions);
//   - secret-remove then runs on the owner alone, for an application-owned
//     secret the leader, once per revision it has not processed, with
//     JUJU_SECRET_ID, JUJU_SECRET_LABEL, JUJU_SECRET_REVISION
//     (internal/worker/uniter/secrets/resolver.go; runner/context/
//     context.go HookVars); a new leader gets the revisions still there
//     (internal/worker/uniter/remotestate/watcher.go restarts the
//     obsolete-revisions watcher with the application as owner);
//   - the tool (runner/jujuc/secret-remove.go, context.go RemoveSecret):
//     leader-only for an application-owned secret, takes effect when the
//     hook exits 0 and not from a hook whose unit lost leadership
//     (secretsmanager RemoveSecrets checks the leadership token); a
//     removed revision cannot be read; without --revision the whole
//     secret goes.
func TestSecretHooks_SecretRemoveForObsoleteRevisionsOnTheOwnerOnly(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	leader, reader := "toy/0", "toy/1"

	h := startHook(t, m, leader)
	uri := strings.TrimSpace(string(h.run("secret-add", "--label", "ca", "ca-cert=first").Stdout))
	h.end(0)
	for _, u := range []string{leader, reader} {
		h = startHook(t, m, u)
		expectOut(t, u+" reads revision 1", h.run("secret-get", uri, "ca-cert"), 0, "first\n", "")
		h.end(0)
	}
	h = startHook(t, m, leader)
	h.run("secret-set", uri, "ca-cert=second")
	h.run("secret-get", uri, "--refresh")
	h.end(0)
	waitIdle(t, m)
	// The reader still tracks revision 1: nothing is obsolete.
	obsoleteIs(t, m, "while the reader tracks revision 1", []int{1, 2}, nil)
	if n := countHooks(m, leader, "secret-remove"); n != 0 {
		t.Fatalf("secret-remove ran %d times while a unit tracked the revision", n)
	}

	// The reader moves to revision 2: revision 1 is obsolete, and only
	// the leader runs secret-remove for it, once.
	h = startHook(t, m, reader)
	expectOut(t, "refresh", h.run("secret-get", uri, "--refresh", "ca-cert"), 0, "second\n", "")
	h.end(0)
	obsoleteIs(t, m, "once nobody tracks revision 1", []int{1, 2}, []int{1})
	waitHookCount(t, m, leader, "secret-remove", 1)
	waitIdle(t, m)
	if n := countHooks(m, reader, "secret-remove"); n != 0 {
		t.Errorf("the non-leader ran secret-remove %d times", n)
	}
	var env map[string]string
	for _, e := range readEnvRecords(t, m, leader) {
		if strings.HasSuffix(e["_file"], "-secret-remove") {
			env = e
		}
	}
	if env["JUJU_SECRET_ID"] != uri || env["JUJU_SECRET_LABEL"] != "ca" || env["JUJU_SECRET_REVISION"] != "1" {
		t.Errorf("secret-remove environment: JUJU_SECRET_ID=%q JUJU_SECRET_LABEL=%q JUJU_SECRET_REVISION=%q, want %q, \"ca\", \"1\"",
			env["JUJU_SECRET_ID"], env["JUJU_SECRET_LABEL"], env["JUJU_SECRET_REVISION"], uri)
	}
	// The toy charm removed nothing: the revision stays, and the hook is
	// not run again for it on that unit (its uniter processed it).
	h = startHook(t, m, leader)
	h.run("secret-set", uri, "ca-cert=third")
	h.end(0)
	waitIdle(t, m)
	if n := countHooks(m, leader, "secret-remove"); n != 1 {
		t.Errorf("secret-remove ran %d times for one obsolete revision, want 1", n)
	}

	// The tool: usage, leadership, commit on exit 0.
	h = startHook(t, m, reader)
	expectOut(t, "no URI", h.run("secret-remove"), 2, "", "ERROR missing secret URI\n")
	expectOut(t, "non-leader", h.run("secret-remove", uri, "--revision", "1"), 1, "", "ERROR this unit is not the leader\n")
	h.end(0)
	h = startHook(t, m, leader)
	expectOut(t, "two URIs", h.run("secret-remove", uri, uri), 2, "", "ERROR unrecognized args: [\""+uri+"\"]\n")
	expectOut(t, "missing revision", h.run("secret-remove", uri, "--revision", "9"), 1, "", "ERROR secret revision 9 for \""+strings.TrimPrefix(uri, "secret:")+"\" not found\n")
	expectOut(t, "remove revision 1", h.run("secret-remove", uri, "--revision", "1"), 0, "", "")
	h.end(1)
	obsoleteIs(t, m, "after a failed hook removed revision 1", []int{1, 2, 3}, []int{1})
	h = startHook(t, m, leader)
	h.run("secret-remove", uri, "--revision", "1")
	m.mu.Lock()
	m.leader = reader // leadership moves before the hook commits
	msg := m.checkCommitLocked(m.units[leader], h.hc)
	m.leader = leader
	m.mu.Unlock()
	if !strings.Contains(msg, "is not leader") {
		t.Errorf("a removal from a unit that lost leadership would commit (%q)", msg)
	}
	h.end(1)
	h = startHook(t, m, leader)
	h.run("secret-remove", uri, "--revision", "1")
	h.end(0)
	obsoleteIs(t, m, "after revision 1 was removed", []int{2, 3}, nil)

	// Revision 2 becomes obsolete (both move to 3); the leader processes
	// it without removing it, then leadership moves: the new leader gets
	// secret-remove for it.
	for _, u := range []string{leader, reader} {
		h = startHook(t, m, u)
		h.run("secret-get", uri, "--refresh")
		h.end(0)
	}
	obsoleteIs(t, m, "once both track revision 3", []int{2, 3}, []int{2})
	waitHookCount(t, m, leader, "secret-remove", 2)
	waitIdle(t, m)
	if err := m.MoveLeadership(reader); err != nil {
		t.Fatal(err)
	}
	waitHookCount(t, m, reader, "secret-remove", 1)
	waitIdle(t, m)

	// A removed revision cannot be read; without --revision the secret
	// goes.
	h = startHook(t, m, reader)
	h.run("secret-remove", uri, "--revision", "2")
	h.end(0)
	m.mu.Lock()
	s := m.secrets.byID[strings.TrimPrefix(uri, "secret:")]
	s.tracked[leader] = 2 // a consumer left on the removed revision
	m.mu.Unlock()
	h = startHook(t, m, leader)
	if r := h.run("secret-get", uri); r.Code == 0 {
		t.Errorf("secret-get of a removed revision succeeded: %q", r.Stdout)
	}
	h.end(0)
	h = startHook(t, m, reader)
	expectOut(t, "remove the secret", h.run("secret-remove", uri), 0, "", "")
	h.end(0)
	if _, _, ok := m.ObsoleteSecretRevisions("ca"); ok {
		t.Error("the secret is still there after secret-remove without --revision")
	}
}

// When a secret hook and a queued action are both due, the unit agent runs
// the secret hook first: the uniter's resolver asks the secrets resolver
// before the actions resolver (juju/juju: internal/worker/uniter/
// resolver.go NextOp, badges "secrets" then "actions"). Both are made due
// under the model's lock, so the agent sees them together.
func TestSecretHooks_RunBeforeAQueuedAction(t *testing.T) {
	m := newActionModel(t)
	unit := "acty/0"
	m.mu.Lock()
	u := m.units[unit]
	s := &secret{id: newSecretID(), kind: ownerApplication, owner: m.app, label: "ca",
		revisions: []map[string]string{{"ca-cert": "first"}, {"ca-cert": "second"}},
		tracked:   map[string]int{unit: 1}, notified: map[string]int{unit: 1}}
	if m.secrets.byID == nil {
		m.secrets.byID = map[string]*secret{}
	}
	m.secrets.byID[s.id] = s
	if m.acts.queued == nil {
		m.acts.queued, m.acts.running = map[string][]*actionRun{}, map[string]*actionRun{}
	}
	m.acts.seq++
	run := &actionRun{res: ActionResult{ID: "queued", Unit: unit, Action: "echo-params", Params: map[string]any{"name": "x"}}, done: make(chan struct{})}
	m.acts.queued[unit] = append(m.acts.queued[unit], run)
	if u.failed != nil || m.nextSecretHookLocked(u) == nil {
		m.mu.Unlock()
		t.Fatal("set-up: no secret hook due")
	}
	m.notifyLocked()
	m.mu.Unlock()

	select {
	case <-run.done:
	case <-time.After(time.Minute):
		t.Fatal("the queued action never ran")
	}
	var changed *HookRecord
	for _, r := range m.History(unit) {
		if r.Hook == "secret-changed" {
			changed = &r
			break
		}
	}
	if changed == nil || !changed.Started.Before(run.res.Started) {
		t.Fatalf("the action started at %s, before the due secret-changed (%v): %v", run.res.Started, changed, hookNames(m.History(unit)))
	}
}
