package sim

import (
	"strings"
	"testing"
)

// openHook is one hook execution of unit: its tool calls share a context,
// and it ends by committing (exit 0) or discarding (failure).
type openHook struct {
	t  *testing.T
	m  *Model
	hc *hookContext
}

func startHook(t *testing.T, m *Model, unit string) *openHook {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	return &openHook{t: t, m: m, hc: m.newContextLocked(m.units[unit], &hookInfo{name: "update-status"})}
}

func (h *openHook) run(tool string, args ...string) toolResponse {
	return h.m.handle(toolRequest{Tool: tool, Args: args, ContextID: h.hc.id})
}

func (h *openHook) end(exit int) {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	delete(h.m.contexts, h.hc.id)
	if exit == 0 {
		h.m.commitSecretsLocked(h.hc)
	} else {
		h.m.discardSecretsLocked(h.hc)
	}
	h.m.notifyLocked()
}

// The semantics of Juju's secret tools that the charm relies on, each
// checked against Juju's source (juju/juju internal/worker/uniter/runner/
// context/context.go: CreateSecret, UpdateSecret, GetSecret,
// lookupOwnedSecretURIByLabel; jujuc/secret-add.go, secret-get.go;
// core/secrets/secret.go).
func TestSecrets_JujuSemantics(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	leader, other := "toy/0", "toy/1"

	// CreateSecret: an application-owned secret needs leadership.
	h := startHook(t, m, other)
	expectOut(t, "secret-add on a non-leader", h.run("secret-add", "--label", "ca", "ca-cert=x"), 1, "", "ERROR this unit is not the leader\n")
	h.end(0)

	// secret-add.go Init: no content is a usage error; keyRegExp.
	h = startHook(t, m, leader)
	expectOut(t, "secret-add without content", h.run("secret-add"), 2, "", "ERROR missing secret value or filename\n")
	if r := h.run("secret-add", "CA=x"); r.Code != 2 || !strings.Contains(string(r.Stderr), "not valid") {
		t.Errorf("bad key accepted: %+v", r)
	}
	if r := h.run("secret-add", "big="+strings.Repeat("x", 9000)); r.Code != 2 || !strings.Contains(string(r.Stderr), "too large") {
		t.Errorf("a 9000-byte value was accepted: %+v", r)
	}
	// A failed hook's secret never exists (changes commit at the end of a
	// successful hook, PR #14500); within the hook it is readable.
	r := h.run("secret-add", "--label", "ca", "ca-cert=first")
	uri := strings.TrimSpace(string(r.Stdout))
	if r.Code != 0 || !strings.HasPrefix(uri, "secret:") || len(uri) != len("secret:")+20 {
		t.Fatalf("secret-add: %+v", r)
	}
	expectOut(t, "pending secret-get by label", h.run("secret-get", "--label", "ca"), 0, "ca-cert: first\n", "")
	// secret-get.go Init parses the first argument as a URI, so a key
	// cannot follow --label.
	expectOut(t, "key after --label", h.run("secret-get", "--label", "ca", "ca-cert"), 2, "", "ERROR secret URI \"ca-cert\" not valid\n")
	h.end(1)
	if got := m.SecretRevisions("ca"); len(got) != 0 {
		t.Fatalf("a failed hook's secret was committed: %v", got)
	}

	h = startHook(t, m, leader)
	uri = strings.TrimSpace(string(h.run("secret-add", "--label", "ca", "ca-cert=first", "ca-key=k1").Stdout))
	if r := h.run("secret-add", "--label", "ca", "ca-cert=again"); r.Code != 1 || !strings.Contains(string(r.Stderr), "already exists") {
		t.Errorf("second secret with the same label: %+v", r)
	}
	h.end(0)
	if got := m.SecretRevisions("ca"); got[uri] != 1 {
		t.Fatalf("committed: %v", got)
	}

	// GetSecret: the owner (the leader) resolves its label; another unit
	// of the application reads by URI only (label lookup is among owned
	// secrets); YAML by default, json on request, one key alone.
	h = startHook(t, m, other)
	expectOut(t, "non-leader by label", h.run("secret-get", "--label", "ca"), 1, "", "ERROR secret \"ca\" not found\n")
	expectOut(t, "non-leader by URI, json", h.run("secret-get", uri, "--format", "json"), 0, `{"ca-cert":"first","ca-key":"k1"}`+"\n", "")
	expectOut(t, "non-leader by URI, yaml", h.run("secret-get", uri), 0, "ca-cert: first\nca-key: k1\n", "")
	expectOut(t, "peek and refresh", h.run("secret-get", uri, "--peek", "--refresh"), 2, "", "ERROR specify one of --peek or --refresh but not both\n")
	expectOut(t, "neither URI nor label", h.run("secret-get"), 2, "", "ERROR require either a secret URI or label\n")
	h.end(0)

	// UpdateSecret: leader only; a new revision only for new content.
	h = startHook(t, m, other)
	expectOut(t, "secret-set on a non-leader", h.run("secret-set", uri, "ca-cert=second"), 1, "", "ERROR this unit is not the leader\n")
	h.end(0)
	h = startHook(t, m, leader)
	expectOut(t, "secret-set unchanged", h.run("secret-set", uri, "ca-cert=first", "ca-key=k1"), 0, "", "")
	h.end(0)
	if got := m.SecretRevisions("ca"); got[uri] != 1 {
		t.Fatalf("unchanged content made a revision: %v", got)
	}
	h = startHook(t, m, leader)
	expectOut(t, "secret-set new content", h.run("secret-set", uri, "ca-cert=second", "ca-key=k2"), 0, "", "")
	h.end(0)
	if got := m.SecretRevisions("ca"); got[uri] != 2 {
		t.Fatalf("new content: %v", got)
	}

	// secret-get.go: the unit keeps its first revision until --refresh;
	// --peek shows the latest once.
	h = startHook(t, m, other)
	expectOut(t, "tracked revision", h.run("secret-get", uri, "ca-cert"), 0, "first\n", "")
	expectOut(t, "peek", h.run("secret-get", uri, "ca-cert", "--peek"), 0, "second\n", "")
	expectOut(t, "after peek", h.run("secret-get", uri, "ca-cert"), 0, "first\n", "")
	expectOut(t, "refresh", h.run("secret-get", uri, "ca-cert", "--refresh"), 0, "second\n", "")
	h.end(0)
	h = startHook(t, m, other)
	expectOut(t, "after a committed refresh", h.run("secret-get", uri, "ca-cert"), 0, "second\n", "")
	h.end(0)

	// secret-ids lists the secrets the unit owns: the leader sees the
	// application's.
	h = startHook(t, m, leader)
	expectOut(t, "secret-ids on the leader", h.run("secret-ids"), 0, "- "+uri+"\n", "")
	h.end(0)
	h = startHook(t, m, other)
	expectOut(t, "secret-ids on a non-leader", h.run("secret-ids", "--format", "json"), 0, "[]\n", "")
	h.end(0)
}
