package sim

import (
	"context"
	"strings"
	"testing"
	"time"
)

func countHooks(m *Model, unit, hook string) int {
	n := 0
	for _, r := range m.History(unit) {
		if r.Hook == hook {
			n++
		}
	}
	return n
}

func waitHookCount(t *testing.T, m *Model, unit, hook string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for countHooks(m, unit, hook) < want {
		select {
		case <-ctx.Done():
			t.Fatalf("%s ran %s %d times, want %d: %v", unit, hook, countHooks(m, unit, hook), want, hookNames(m.History(unit)))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// secret-changed reaches the units that have read the secret, for a
// revision added after their first read, leader included for an
// application-owned secret (apiserver/facades/agent/secretsmanager/
// secrets.go ensureConsumerMetadataForAppOwnedSecretsForPeerUnits;
// internal/worker/uniter/secrets/resolver.go NextOp compares the latest
// revision with the one the uniter last ran the hook for), with
// JUJU_SECRET_ID and JUJU_SECRET_LABEL; a unit that never read it gets
// nothing; the hook does not move the tracked revision (only --refresh).
func TestSecretHooks_SecretChangedReachesConsumersOnly(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	leader, reader, bystander := "toy/0", "toy/1", "toy/2"

	h := startHook(t, m, leader)
	uri := strings.TrimSpace(string(h.run("secret-add", "--label", "ca", "ca-cert=first").Stdout))
	h.end(0)
	h = startHook(t, m, reader)
	expectOut(t, "first read", h.run("secret-get", uri, "ca-cert"), 0, "first\n", "")
	h.end(0)
	waitIdle(t, m)
	for _, u := range []string{leader, reader, bystander} {
		if n := countHooks(m, u, "secret-changed"); n != 0 {
			t.Fatalf("%s ran secret-changed %d times before any new revision", u, n)
		}
	}

	h = startHook(t, m, leader)
	expectOut(t, "new revision", h.run("secret-set", uri, "ca-cert=second"), 0, "", "")
	h.end(0)
	waitHookCount(t, m, reader, "secret-changed", 1)
	waitIdle(t, m)
	if n := countHooks(m, reader, "secret-changed"); n != 1 {
		t.Errorf("the reader ran secret-changed %d times for one new revision, want 1", n)
	}
	for _, u := range []string{leader, bystander} {
		if n := countHooks(m, u, "secret-changed"); n != 0 {
			t.Errorf("%s (never read the secret) ran secret-changed %d times", u, n)
		}
	}
	var env map[string]string
	for _, e := range readEnvRecords(t, m, reader) {
		if strings.HasSuffix(e["_file"], "-secret-changed") {
			env = e
		}
	}
	if env["JUJU_SECRET_ID"] != uri || env["JUJU_SECRET_LABEL"] != "ca" {
		t.Errorf("secret-changed environment: JUJU_SECRET_ID=%q JUJU_SECRET_LABEL=%q, want %q and \"ca\"", env["JUJU_SECRET_ID"], env["JUJU_SECRET_LABEL"], uri)
	}
	h = startHook(t, m, reader)
	expectOut(t, "tracked revision after secret-changed", h.run("secret-get", uri, "ca-cert"), 0, "first\n", "")
	h.end(0)

	// The leader becomes a consumer by reading it too.
	h = startHook(t, m, leader)
	h.run("secret-get", uri)
	h.end(0)
	h = startHook(t, m, leader)
	h.run("secret-set", uri, "ca-cert=third")
	h.end(0)
	waitHookCount(t, m, leader, "secret-changed", 1)
	waitHookCount(t, m, reader, "secret-changed", 2)
	waitIdle(t, m)
	if n := countHooks(m, bystander, "secret-changed"); n != 0 {
		t.Errorf("the bystander ran secret-changed %d times", n)
	}
}

// secret-rotate: policies and their validation (jujuc/secret-add.go Init,
// core/secrets/rotate.go), the hook on the leader only for an
// application-owned secret (secretsmanager WatchSecretsRotationChanges
// needs a leadership token), and the schedule after it: the policy's
// interval after the due time when the hook added a revision, 5 minutes
// (RotateRetryDelay) when it did not (domain/secret/service SecretRotated).
func TestSecretHooks_SecretRotateOnTheLeaderAndItsSchedule(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	leader, other := "toy/0", "toy/1"

	h := startHook(t, m, leader)
	expectOut(t, "bad policy", h.run("secret-add", "--rotate", "fortnightly", "a-key=x"), 2, "", "ERROR rotate policy \"fortnightly\" not valid\n")
	uri := strings.TrimSpace(string(h.run("secret-add", "--label", "ca", "--rotate", "hourly", "ca-cert=first").Stdout))
	h.end(0)
	policy, next, _ := m.SecretRotation("ca")
	if policy != "hourly" || next.Before(time.Now().Add(59*time.Minute)) || next.After(time.Now().Add(61*time.Minute)) {
		t.Fatalf("after secret-add --rotate hourly: policy %q, next rotation %s; want hourly, in an hour", policy, next)
	}
	if err := m.RotateSecretNow("nope"); err == nil {
		t.Error("RotateSecretNow of a missing secret succeeded")
	}

	// Due now: the leader runs secret-rotate; the toy charm adds no
	// revision, so Juju tries again 5 minutes after the due time.
	before := time.Now()
	if err := m.RotateSecretNow("ca"); err != nil {
		t.Fatal(err)
	}
	waitHookCount(t, m, leader, "secret-rotate", 1)
	waitIdle(t, m)
	if n := countHooks(m, other, "secret-rotate"); n != 0 {
		t.Errorf("a non-leader ran secret-rotate %d times", n)
	}
	_, next, _ = m.SecretRotation("ca")
	if d := next.Sub(before); d < 5*time.Minute-time.Second || d > 5*time.Minute+10*time.Second {
		t.Errorf("after a secret-rotate that added no revision the next rotation is %s after it was due, want 5m", d)
	}

	// A secret-rotate hook that adds a revision schedules the policy's
	// next time from the due time.
	m.mu.Lock()
	s := m.secrets.byID[strings.TrimPrefix(uri, "secret:")]
	due := time.Now()
	s.nextRotate = due
	hc := m.newContextLocked(m.units[leader], &hookInfo{name: "secret-rotate", secret: &secretHook{id: s.id, label: s.label, revision: len(s.revisions), due: due}})
	m.mu.Unlock()
	h = &openHook{t: t, m: m, hc: hc}
	h.run("secret-set", uri, "ca-cert=rotated")
	h.end(0)
	_, next, _ = m.SecretRotation("ca")
	if !next.Equal(due.Add(time.Hour)) {
		t.Errorf("after a secret-rotate that added a revision the next rotation is %s, want due+1h (%s)", next, due.Add(time.Hour))
	}

	// secret-set --rotate changes the policy (and restarts the schedule);
	// never stops it.
	h = startHook(t, m, leader)
	expectOut(t, "set policy never", h.run("secret-set", uri, "--rotate", "never"), 0, "", "")
	h.end(0)
	if policy, next, _ := m.SecretRotation("ca"); policy != "never" || !next.IsZero() {
		t.Errorf("after secret-set --rotate never: policy %q, next %s", policy, next)
	}
	if err := m.RotateSecretNow("ca"); err == nil {
		t.Error("RotateSecretNow of a secret whose policy is never succeeded")
	}
}
