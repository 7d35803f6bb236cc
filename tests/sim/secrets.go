package sim

import (
	"crypto/rand"
	"maps"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Juju's secret hook tools, with Juju's semantics (juju/juju:
// internal/worker/uniter/runner/jujuc/secret-add.go, secret-get.go,
// secret-set.go, secret-ids.go; the hook context's CreateSecret,
// UpdateSecret, GetSecret in internal/worker/uniter/runner/context/
// context.go; core/secrets/secret.go for the data rules):
//
//   - secret-add prints the new URI at once but, like every secret change,
//     takes effect only when the hook exits 0 (the uniter commits them with
//     the hook's other changes, juju/juju PR #14500 "Commit secret updates,
//     deletes, access changes at end of hook execution"); a failed or
//     killed hook leaves no secret. Within the hook, secret-get already
//     sees the pending content.
//   - --owner application (the default) needs leadership: a non-leader
//     gets "this unit is not the leader" (ErrIsNotLeader); so does
//     secret-set of an application-owned secret.
//   - keys match ^([a-z](?:-?[a-z0-9]){2,})$; a value is at most 8 KiB
//     (Juju 3.6's limit; Juju 4 allows 1 MB: the stricter one here).
//   - secret-get takes the URI or --label. A label resolves only among the
//     secrets the unit owns: an application-owned secret's label only for
//     the leader (SecretMetadata lists owned secrets); other units read it
//     by URI. The first read returns the latest revision and the unit
//     keeps seeing that revision until --refresh (latest, and from now on)
//     or --peek (latest, this once).
//   - secret-set with new content adds a revision; unchanged content adds
//     none (checksum).
//
// The secret hooks (secret-changed, secret-rotate) and rotate policies
// are in secrethooks.go; obsolete revisions, secret-remove (hook and tool)
// in secretremove.go.
//
// Not modelled: grants to other applications (one application per model),
// the secret-expired hook (expiry policies), secret-info-get, --expire,
// --file, #base64 and #file keys, backends.

var secretKeyRE = regexp.MustCompile(`^([a-z](?:-?[a-z0-9]){2,})$`)

const secretMaxValueBytes = 8 * 1024

type secretOwnerKind int

const (
	ownerApplication secretOwnerKind = iota
	ownerUnit
)

type secret struct {
	id          string
	kind        secretOwnerKind
	owner       string // application or unit name
	label       string
	description string
	revisions   []map[string]string // revision n is revisions[n-1]
	tracked     map[string]int      // unit -> revision it reads
	// rotate is the rotate policy ("" or "never": none) and nextRotate
	// when secret-rotate is next due (secrethooks.go).
	rotate     string
	nextRotate time.Time
	// notified is, per consumer unit, the revision its uniter last ran
	// secret-changed for (or saw when it first read the secret).
	notified map[string]int
	// obsolete are the revisions Juju has marked obsolete, removed those
	// removed (their content is nil), removeDone per unit the revisions
	// its uniter ran secret-remove for (secretremove.go).
	obsolete   map[int]bool
	removed    map[int]bool
	removeDone map[string]map[int]bool
}

// secretChanges are one hook's uncommitted secret changes.
type secretChanges struct {
	creates []*secret
	updates map[string]secretUpdate
	refresh map[string]bool // track the latest revision from now on
	removes []secretRemoval // secretremove.go
}

type secretUpdate struct {
	content     map[string]string
	label       *string
	description *string
	rotate      *string
}

// secretState is the model's secrets (Model.secrets).
type secretState struct {
	byID    map[string]*secret
	pending map[string]*secretChanges // by hook context id
}

func (s *secretState) changes(hc *hookContext) *secretChanges {
	if s.pending == nil {
		s.pending = map[string]*secretChanges{}
	}
	c := s.pending[hc.id]
	if c == nil {
		c = &secretChanges{updates: map[string]secretUpdate{}, refresh: map[string]bool{}}
		s.pending[hc.id] = c
	}
	return c
}

// newSecretID returns a 20-character id in Juju's (xid) alphabet.
func newSecretID() string {
	const alphabet = "0123456789abcdefghijklmnopqrstuv"
	b := make([]byte, 20)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func parseSecretURI(s string) (string, bool) {
	id := strings.TrimPrefix(s, "secret:")
	if len(id) != 20 || strings.Trim(id, "0123456789abcdefghijklmnopqrstuv") != "" {
		return "", false
	}
	return id, true
}

func secretData(args []string) (map[string]string, error) {
	data := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usagef("key value %q not valid", a)
		}
		if !secretKeyRE.MatchString(k) {
			return nil, usagef("key %q not valid", k)
		}
		if len(v) > secretMaxValueBytes {
			return nil, usagef("secret content for key %q too large: %d bytes", k, len(v))
		}
		data[k] = v
	}
	return data, nil
}

var (
	ownerFlag       = flagDef{names: []string{"owner"}, value: true}
	labelFlag       = flagDef{names: []string{"label"}, value: true}
	descriptionFlag = flagDef{names: []string{"description"}, value: true}
	peekFlag        = flagDef{names: []string{"peek"}}
	refreshFlag     = flagDef{names: []string{"refresh"}}
	rotateFlag      = flagDef{names: []string{"rotate"}, value: true}
)

// ownsLocked reports whether the hook's unit may manage s (and resolve its
// owner label): the leader for an application-owned secret, the unit
// itself for a unit-owned one.
func (m *Model) ownsLocked(hc *hookContext, s *secret) bool {
	if s.kind == ownerApplication {
		return s.owner == m.app && m.leader == hc.unit.name
	}
	return s.owner == hc.unit.name
}

// visibleLocked is every secret the hook can see: committed ones and this
// hook's pending creates.
func (m *Model) visibleLocked(hc *hookContext) []*secret {
	var out []*secret
	for _, s := range m.secrets.byID {
		out = append(out, s)
	}
	if c := m.secrets.pending[hc.id]; c != nil {
		out = append(out, c.creates...)
	}
	return out
}

func (m *Model) toolSecretAdd(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, ownerFlag, labelFlag, descriptionFlag, rotateFlag)
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("missing secret value or filename")
	}
	rotate, hasRotate := vals["rotate"]
	if hasRotate && !validRotatePolicy(rotate) {
		return toolResponse{}, usagef("rotate policy %q not valid", rotate)
	}
	owner := vals["owner"]
	if owner == "" {
		owner = "application"
	}
	if owner != "application" && owner != "unit" {
		return toolResponse{}, usagef("secret owner %q not valid", owner)
	}
	data, err := secretData(pos)
	if err != nil {
		return toolResponse{}, err
	}
	s := &secret{id: newSecretID(), kind: ownerApplication, owner: m.app, label: vals["label"],
		description: vals["description"], revisions: []map[string]string{data}, tracked: map[string]int{},
		notified: map[string]int{}, rotate: rotate}
	if next, ok := nextRotateTime(rotate, time.Now()); ok {
		s.nextRotate = next
	}
	if owner == "unit" {
		s.kind, s.owner = ownerUnit, hc.unit.name
	} else if m.leader != hc.unit.name {
		return toolResponse{}, errorf("this unit is not the leader")
	}
	if s.label != "" {
		for _, o := range m.visibleLocked(hc) {
			if o.label == s.label && o.kind == s.kind && o.owner == s.owner {
				return toolResponse{}, errorf("secret with label %q already exists", s.label)
			}
		}
	}
	c := m.secrets.changes(hc)
	c.creates = append(c.creates, s)
	return toolResponse{Stdout: []byte("secret:" + s.id + "\n")}, nil
}

// resolveLocked finds the secret a tool names by URI or owner label.
// changeableLocked resolves uri to a secret this hook's unit may change
// (secret-set) or remove (secret-remove): its owner, and for an
// application-owned secret only while it leads (the rules in the comment
// at the top of this file and of secretremove.go).
func (m *Model) changeableLocked(hc *hookContext, uri string) (*secret, error) {
	s, err := m.resolveLocked(hc, uri, "")
	if err != nil {
		return nil, err
	}
	if s.kind == ownerApplication && m.leader != hc.unit.name {
		return nil, errorf("this unit is not the leader")
	}
	if !m.ownsLocked(hc, s) {
		return nil, errorf("permission denied")
	}
	return s, nil
}

func (m *Model) resolveLocked(hc *hookContext, uri, label string) (*secret, error) {
	if uri != "" {
		id, ok := parseSecretURI(uri)
		if !ok {
			return nil, errorf("secret URI %q not valid", uri)
		}
		for _, s := range m.visibleLocked(hc) {
			if s.id == id {
				if s.kind == ownerUnit && s.owner != hc.unit.name {
					return nil, errorf("permission denied")
				}
				return s, nil
			}
		}
		return nil, errorf("secret %q not found", id)
	}
	for _, s := range m.visibleLocked(hc) {
		if s.label == label && m.ownsLocked(hc, s) {
			return s, nil
		}
	}
	return nil, errorf("secret %q not found", label)
}

func (m *Model) toolSecretGet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, labelFlag, peekFlag, refreshFlag)
	if err != nil {
		return toolResponse{}, err
	}
	var uri, key string
	if len(pos) > 0 {
		uri, pos = pos[0], pos[1:]
		if _, ok := parseSecretURI(uri); !ok {
			return toolResponse{}, usagef("secret URI %q not valid", uri)
		}
	}
	if uri == "" && vals["label"] == "" {
		return toolResponse{}, usagef("require either a secret URI or label")
	}
	if vals["peek"] != "" && vals["refresh"] != "" {
		return toolResponse{}, usagef("specify one of --peek or --refresh but not both")
	}
	if len(pos) > 0 {
		key, pos = pos[0], pos[1:]
	}
	if len(pos) > 0 {
		return toolResponse{}, usagef("unrecognized args: %q", pos)
	}
	s, err := m.resolveLocked(hc, uri, vals["label"])
	if err != nil {
		return toolResponse{}, err
	}
	content := m.contentLocked(hc, s, vals["refresh"] != "", vals["peek"] != "")
	if content == nil {
		// The revision the unit reads was removed (secret-remove).
		return toolResponse{}, errorf("secret revision for %q not found", s.id)
	}
	format := vals["format"]
	if format == "" || format == "smart" {
		format = "yaml"
	}
	if key == "" {
		return output(format, content), nil
	}
	v, ok := content[key]
	if !ok {
		return toolResponse{}, errorf("secret key %q not found", key)
	}
	return output(format, v), nil
}

// contentLocked is the revision the unit reads: this hook's pending
// content first; else its tracked revision (the latest on first read),
// the latest with peek or refresh (refresh tracks it once the hook
// commits).
func (m *Model) contentLocked(hc *hookContext, s *secret, refresh, peek bool) map[string]string {
	c := m.secrets.changes(hc)
	for _, p := range c.creates {
		if p == s {
			return maps.Clone(s.revisions[0])
		}
	}
	if u, ok := c.updates[s.id]; ok && u.content != nil && (refresh || peek) {
		if refresh {
			c.refresh[s.id] = true
		}
		return maps.Clone(u.content)
	}
	latest := len(s.revisions)
	rev, seen := s.tracked[hc.unit.name]
	switch {
	case !seen:
		// The first read makes the unit a consumer (Juju saves a consumer
		// record, which is what secret-changed watches).
		s.tracked[hc.unit.name] = latest
		s.notified[hc.unit.name] = latest
		rev = latest
		m.markObsoleteLocked(s)
	case refresh:
		c.refresh[s.id] = true
		rev = latest
	case peek:
		rev = latest
	}
	return maps.Clone(s.revisions[rev-1])
}

func (m *Model) toolSecretSet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, labelFlag, descriptionFlag, ownerFlag, rotateFlag)
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("missing secret URI")
	}
	if r, ok := vals["rotate"]; ok && !validRotatePolicy(r) {
		return toolResponse{}, usagef("rotate policy %q not valid", r)
	}
	s, err := m.changeableLocked(hc, pos[0])
	if err != nil {
		return toolResponse{}, err
	}
	data, err := secretData(pos[1:])
	if err != nil {
		return toolResponse{}, err
	}
	c := m.secrets.changes(hc)
	u := c.updates[s.id]
	if len(data) > 0 && !maps.Equal(data, s.revisions[len(s.revisions)-1]) {
		u.content = data
	}
	if l, ok := vals["label"]; ok {
		u.label = &l
	}
	if d, ok := vals["description"]; ok {
		u.description = &d
	}
	if r, ok := vals["rotate"]; ok {
		u.rotate = &r
	}
	c.updates[s.id] = u
	return toolResponse{}, nil
}

func (m *Model) toolSecretIDs(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args)
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) > 0 {
		return toolResponse{}, usagef("unrecognized args: %q", pos)
	}
	ids := []string{}
	for _, s := range m.visibleLocked(hc) {
		if m.ownsLocked(hc, s) {
			ids = append(ids, "secret:"+s.id)
		}
	}
	sort.Strings(ids)
	format := vals["format"]
	if format == "" {
		format = "yaml"
	}
	return output(format, ids), nil
}

// commitSecretsLocked applies a hook's secret changes once it exited 0.
func (m *Model) commitSecretsLocked(hc *hookContext) {
	c := m.secrets.pending[hc.id]
	delete(m.secrets.pending, hc.id)
	// A secret hook is recorded once its own changes are in.
	defer m.secretHookDoneLocked(hc)
	if c == nil {
		return
	}
	if m.secrets.byID == nil {
		m.secrets.byID = map[string]*secret{}
	}
	for _, s := range c.creates {
		m.secrets.byID[s.id] = s
	}
	for id, u := range c.updates {
		s := m.secrets.byID[id]
		if s == nil {
			continue
		}
		if u.content != nil {
			s.revisions = append(s.revisions, u.content)
		}
		if u.label != nil {
			s.label = *u.label
		}
		if u.description != nil {
			s.description = *u.description
		}
		if u.rotate != nil && *u.rotate != s.rotate {
			// A changed policy restarts the schedule from now.
			s.rotate, s.nextRotate = *u.rotate, time.Time{}
			if next, ok := nextRotateTime(s.rotate, time.Now()); ok {
				s.nextRotate = next
			}
		}
	}
	for id := range c.refresh {
		if s := m.secrets.byID[id]; s != nil {
			s.tracked[hc.unit.name] = len(s.revisions)
		}
	}
	// A new revision or a saved consumer marks the obsolete revisions in
	// the same transaction (secretremove.go).
	for id := range c.updates {
		if s := m.secrets.byID[id]; s != nil {
			m.markObsoleteLocked(s)
		}
	}
	for id := range c.refresh {
		if s := m.secrets.byID[id]; s != nil {
			m.markObsoleteLocked(s)
		}
	}
	m.applyRemovalsLocked(c)
}

// discardSecretsLocked drops a failed hook's secret changes.
func (m *Model) discardSecretsLocked(hc *hookContext) {
	delete(m.secrets.pending, hc.id)
}

// SecretRevisions returns, for each committed secret with the given label,
// its URI and number of revisions (for tests).
func (m *Model) SecretRevisions(label string) map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for _, s := range m.secrets.byID {
		if s.label == label {
			out["secret:"+s.id] = len(s.revisions)
		}
	}
	return out
}
