package sim

import (
	"fmt"
	"sort"
	"strconv"
	"time"
)

// The secret hooks and rotate policies, as Juju's uniter and controller run
// them:
//
//   - The secrets resolver comes after leader-elected and before queued
//     actions and the charm's other hooks, and only when the unit is
//     installed, alive and has no failed hook (juju/juju: internal/worker/uniter/resolver.go
//     nextOp, badge "secrets"; internal/worker/uniter/secrets/resolver.go
//     NextOp: localState.Installed, not Dying, Kind == Continue). Within it
//     expiry comes first, then rotation, then secret-changed.
//   - secret-changed runs on a consumer of a secret when the secret's
//     latest revision differs from the revision its uniter last ran the
//     hook for (ConsumedSecretInfo, recorded when the hook commits:
//     internal/worker/uniter/secrets/state.go UpdateStateForHook). A unit
//     becomes a consumer by reading the secret: secret-get saves a consumer
//     record (domain/secret/service GetConsumedRevision), and for an
//     application-owned secret every unit of the owning application,
//     leader or not, gets one ("a fake consumer doc for triggering
//     secret-changed event for uniter": apiserver/facades/agent/
//     secretsmanager/secrets.go ensureConsumerMetadataForAppOwnedSecrets
//     ForPeerUnits). So it fires only for a revision added after the unit
//     first read the secret, and never on the owner unit of a unit-owned
//     secret. The hook does not move the unit's tracked revision: only
//     secret-get --refresh does.
//   - secret-rotate runs on the owner when the rotate policy is due: for an
//     application-owned secret only on the leader (WatchSecretsRotation
//     Changes needs a leadership token: charmSecretOwnersFromArgs). When it
//     commits, the next rotation is the policy's interval after the time
//     that was due, unless the hook added no revision: then Juju tries
//     again RotateRetryDelay (5 minutes) after it (domain/secret/service
//     SecretRotated; core/secrets/rotate.go). A hook that fails is retried
//     as any failed hook and leaves the schedule as it was.
//   - Policies: never, hourly, daily, weekly, monthly, quarterly, yearly
//     (core/secrets/rotate.go); secret-add --rotate and secret-set --rotate
//     start the schedule from now; an unknown policy is a usage error
//     ("rotate policy %q not valid", jujuc/secret-add.go Init).
//
// Obsolete revisions and secret-remove: secretremove.go. Not modelled:
// expiry (--expire, secret-expired), and the timer: a rotation that becomes due is noticed
// at the agent's next wake-up (a model change, RotateSecretNow, or the
// update-status timer), never earlier than Juju would.

// rotateRetryDelay is core/secrets RotateRetryDelay.
const rotateRetryDelay = 5 * time.Minute

// secretHook is the secret a secret hook is about.
type secretHook struct {
	id    string
	label string
	// revision is, for secret-changed, the revision it reports; for
	// secret-rotate, the latest revision when the hook started (the
	// "original revision" Juju compares with).
	revision int
	due      time.Time
}

func validRotatePolicy(p string) bool {
	switch p {
	case "never", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly":
		return true
	}
	return false
}

// nextRotateTime is core/secrets RotatePolicy.NextRotateTime.
func nextRotateTime(policy string, from time.Time) (time.Time, bool) {
	switch policy {
	case "hourly":
		return from.Add(time.Hour), true
	case "daily":
		return from.AddDate(0, 0, 1), true
	case "weekly":
		return from.AddDate(0, 0, 7), true
	case "monthly":
		return from.AddDate(0, 1, 0), true
	case "quarterly":
		return from.AddDate(0, 3, 0), true
	case "yearly":
		return from.AddDate(1, 0, 0), true
	}
	return time.Time{}, false
}

func (m *Model) sortedSecretsLocked() []*secret {
	out := make([]*secret, 0, len(m.secrets.byID))
	for _, s := range m.secrets.byID {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// nextSecretHookLocked is the secrets resolver's next hook for u, or nil.
func (m *Model) nextSecretHookLocked(u *unit) *hookInfo {
	now := time.Now()
	for _, s := range m.sortedSecretsLocked() {
		if s.nextRotate.IsZero() || now.Before(s.nextRotate) || !m.ownerUnitLocked(u, s) {
			continue
		}
		return &hookInfo{name: "secret-rotate", secret: &secretHook{id: s.id, label: s.label, revision: len(s.revisions), due: s.nextRotate}}
	}
	for _, s := range m.sortedSecretsLocked() {
		seen, consumer := s.notified[u.name]
		if !consumer || seen == len(s.revisions) || s.kind == ownerUnit && s.owner == u.name {
			continue
		}
		return &hookInfo{name: "secret-changed", secret: &secretHook{id: s.id, label: s.label, revision: len(s.revisions)}}
	}
	return m.nextSecretRemoveLocked(u) // secretremove.go
}

// ownerUnitLocked: the unit that manages s now (the leader for an
// application-owned secret).
func (m *Model) ownerUnitLocked(u *unit, s *secret) bool {
	if s.kind == ownerApplication {
		return s.owner == m.app && m.leader == u.name
	}
	return s.owner == u.name
}

// secretHookDoneLocked records a committed secret hook, after the hook's
// own secret changes are committed.
func (m *Model) secretHookDoneLocked(hc *hookContext) {
	h := hc.hook
	if h == nil || h.secret == nil {
		return
	}
	s := m.secrets.byID[h.secret.id]
	if s == nil {
		return
	}
	switch h.name {
	case "secret-changed":
		s.notified[hc.unit.name] = h.secret.revision
	case "secret-remove":
		s.secretRemoveDoneLocked(hc.unit.name, h.secret.revision)
	case "secret-rotate":
		if !m.ownerUnitLocked(hc.unit, s) || !s.nextRotate.Equal(h.secret.due) {
			// Not the owner any more (SecretRotated needs leadership), or
			// the policy changed during the hook.
			return
		}
		next, ok := nextRotateTime(s.rotate, h.secret.due)
		if !ok {
			s.nextRotate = time.Time{}
			return
		}
		if len(s.revisions) == h.secret.revision {
			next = h.secret.due.Add(rotateRetryDelay)
		}
		s.nextRotate = next
	}
}

// secretHookEnv is what Juju adds to a secret hook's environment
// (JUJU_SECRET_ID, JUJU_SECRET_LABEL, and JUJU_SECRET_REVISION for a hook
// about a revision, secret-remove here: internal/worker/uniter/runner/
// context/context.go HookVars).
func secretHookEnv(h *hookInfo) []string {
	if h.secret == nil {
		return nil
	}
	env := []string{"JUJU_SECRET_ID=secret:" + h.secret.id, "JUJU_SECRET_LABEL=" + h.secret.label}
	if h.name == "secret-remove" {
		env = append(env, "JUJU_SECRET_REVISION="+strconv.Itoa(h.secret.revision))
	}
	return env
}

// RotateSecretNow makes the rotation of the committed secrets labelled
// label due now, as if their rotate policy's time had come. It fails for a
// secret without a rotate policy (Juju never rotates those).
func (m *Model) RotateSecretNow(label string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, s := range m.secrets.byID {
		if s.label != label {
			continue
		}
		if _, ok := nextRotateTime(s.rotate, time.Now()); !ok {
			return fmt.Errorf("cannot rotate secret %q now: its rotate policy is %q", label, s.rotate)
		}
		s.nextRotate = time.Now()
		n++
	}
	if n == 0 {
		return fmt.Errorf("cannot rotate secret %q now: no such secret", label)
	}
	m.notifyLocked()
	return nil
}

// SecretRotation returns the rotate policy and the next rotation time of
// the committed secret labelled label (for tests).
func (m *Model) SecretRotation(label string) (policy string, next time.Time, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.secrets.byID {
		if s.label == label {
			return s.rotate, s.nextRotate, true
		}
	}
	return "", time.Time{}, false
}
