package sim

import (
	"fmt"
	"strconv"
)

// Obsolete secret revisions, the secret-remove hook and the secret-remove
// tool, as Juju does them:
//
//   - A revision becomes obsolete when it is not the latest and no
//     consumer's tracked revision is it. Juju marks it so (and it stays so)
//     in the same transaction that adds a revision or saves a consumer's
//     tracked revision (domain/secret/state markObsoleteRevisions, called
//     from UpdateSecret and saveSecretConsumer: secret-get --refresh, a
//     first read); a unit's removal deletes its consumer record but marks
//     nothing until the next such transaction. The unit consumers of an
//     application-owned secret include its own units that read it
//     (secrets.go contentLocked).
//   - The owner's uniter runs secret-remove once per obsolete revision it
//     has not processed yet (internal/worker/uniter/secrets/resolver.go
//     NextOp, after expiry, rotation, secret-changed and deleted
//     revisions; the processed revisions are the uniter's state, recorded
//     when the hook commits: secrets/state.go). The owner is the unit for a
//     unit-owned secret and, for an application-owned one, the leader: the
//     obsolete-revisions watcher watches the application only while the
//     unit leads, and is restarted when leadership changes (internal/
//     worker/uniter/remotestate/watcher.go), so a new leader gets the
//     revisions still there that it has not processed. The hook carries
//     JUJU_SECRET_ID, JUJU_SECRET_LABEL and JUJU_SECRET_REVISION
//     (runner/context/context.go HookVars: the revision when > 0).
//   - `secret-remove <uri> [--revision N]` (runner/jujuc/secret-remove.go:
//     one URI argument, --revision 0 meaning the whole secret) needs
//     leadership for an application-owned secret ("this unit is not the
//     leader": context.go RemoveSecret) and ownership (the secretsmanager
//     facade's RemoveSecrets refuses others: "permission denied"; Juju
//     says so when the hook's changes are committed, the simulator at the
//     call, which no charm can tell apart from a failed hook). Like every
//     secret change it takes effect only when the hook exits 0 and the
//     unit is still the leader (the commit needs the leadership token,
//     checkSecretsCommitLocked). A removed revision cannot be read; the
//     last one removed takes the secret with it.

// secretRemoval is one pending secret-remove.
type secretRemoval struct {
	id       string
	revision int // 0: the whole secret
}

var revisionFlag = flagDef{names: []string{"revision"}, value: true}

func (m *Model) toolSecretRemove(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, revisionFlag)
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("missing secret URI")
	}
	if _, ok := parseSecretURI(pos[0]); !ok {
		return toolResponse{}, usagef("secret URI %q not valid", pos[0])
	}
	if len(pos) > 1 {
		return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
	}
	rev := 0
	if v, ok := vals["revision"]; ok {
		if rev, err = strconv.Atoi(v); err != nil {
			return toolResponse{}, usagef("invalid value %q for flag -revision: parse error", v)
		}
	}
	s, err := m.changeableLocked(hc, pos[0])
	if err != nil {
		return toolResponse{}, err
	}
	if rev > 0 && (rev > len(s.revisions) || s.removed[rev]) {
		return toolResponse{}, errorf("secret revision %d for %q not found", rev, s.id)
	}
	c := m.secrets.changes(hc)
	c.removes = append(c.removes, secretRemoval{id: s.id, revision: max(rev, 0)})
	return toolResponse{}, nil
}

// applyRemovalsLocked commits a hook's secret-remove calls.
func (m *Model) applyRemovalsLocked(c *secretChanges) {
	for _, r := range c.removes {
		s := m.secrets.byID[r.id]
		if s == nil {
			continue
		}
		if r.revision == 0 {
			delete(m.secrets.byID, r.id)
			continue
		}
		if s.removed == nil {
			s.removed = map[int]bool{}
		}
		s.removed[r.revision] = true
		s.revisions[r.revision-1] = nil
		if len(s.removed) == len(s.revisions) {
			delete(m.secrets.byID, r.id)
		}
	}
}

// markObsoleteLocked marks the revisions of s that are neither the latest
// nor tracked by a unit that still exists (markObsoleteRevisions).
func (m *Model) markObsoleteLocked(s *secret) {
	latest := len(s.revisions)
	inUse := map[int]bool{latest: true}
	for unit, rev := range s.tracked {
		if _, ok := m.units[unit]; ok {
			inUse[rev] = true
		}
	}
	for r := 1; r < latest; r++ {
		if !inUse[r] && !s.removed[r] {
			if s.obsolete == nil {
				s.obsolete = map[int]bool{}
			}
			s.obsolete[r] = true
		}
	}
}

// nextSecretRemoveLocked is the secret-remove hook due on u, or nil.
func (m *Model) nextSecretRemoveLocked(u *unit) *hookInfo {
	for _, s := range m.sortedSecretsLocked() {
		if !m.ownerUnitLocked(u, s) {
			continue
		}
		for r := 1; r <= len(s.revisions); r++ {
			if s.obsolete[r] && !s.removed[r] && !s.removeDone[u.name][r] {
				return &hookInfo{name: "secret-remove", secret: &secretHook{id: s.id, label: s.label, revision: r}}
			}
		}
	}
	return nil
}

// secretRemoveDoneLocked records a committed secret-remove hook in the
// unit's uniter state.
func (s *secret) secretRemoveDoneLocked(unit string, rev int) {
	if s.removeDone == nil {
		s.removeDone = map[string]map[int]bool{}
	}
	if s.removeDone[unit] == nil {
		s.removeDone[unit] = map[int]bool{}
	}
	s.removeDone[unit][rev] = true
}

// checkSecretsCommitLocked refuses the commit of a hook whose unit lost
// leadership while it changed an application-owned secret: Juju's
// secretsmanager facade checks the leadership token when the uniter
// commits (CreateSecrets, UpdateSecrets, RemoveSecrets), and the hook
// fails.
func (m *Model) checkSecretsCommitLocked(u *unit, hc *hookContext) string {
	c := m.secrets.pending[hc.id]
	if c == nil || m.leader == u.name {
		return ""
	}
	appOwned := func(id string) bool {
		s := m.secrets.byID[id]
		return s != nil && s.kind == ownerApplication
	}
	changed := false
	for _, s := range c.creates {
		changed = changed || s.kind == ownerApplication
	}
	for id := range c.updates {
		changed = changed || appOwned(id)
	}
	for _, r := range c.removes {
		changed = changed || appOwned(r.id)
	}
	if changed {
		return fmt.Sprintf("cannot apply secret changes: %q is not leader of %q", u.name, m.app)
	}
	return ""
}

// ObsoleteSecretRevisions returns, for the committed secret labelled
// label, its revisions that exist (not removed) and those of them Juju
// has marked obsolete (for tests).
func (m *Model) ObsoleteSecretRevisions(label string) (existing, obsolete []int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.sortedSecretsLocked() {
		if s.label != label {
			continue
		}
		for r := 1; r <= len(s.revisions); r++ {
			if s.removed[r] {
				continue
			}
			existing = append(existing, r)
			if s.obsolete[r] {
				obsolete = append(obsolete, r)
			}
		}
		return existing, obsolete, true
	}
	return nil, nil, false
}
