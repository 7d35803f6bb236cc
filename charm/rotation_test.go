package charm_test

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/charm"
	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/clustertls"
)

// everyPairTrusts fails unless every unit's node certificate verifies
// against every unit's bundle: the property a rotation must keep at every
// moment (a node that cannot verify a peer cannot take part in Raft).
func everyPairTrusts(t *testing.T, when string, units ...*unit) {
	t.Helper()
	for _, a := range units {
		ma := a.material(t)
		for _, b := range units {
			leaf := b.material(t).Cert.Leaf
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: ma.Pool, DNSName: clustertls.ServerName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Fatalf("%s: %s does not trust %s's certificate: %v", when, a.name, b.name, err)
			}
		}
	}
}

// The leader drives the three steps over the relation; after every single
// hook every unit still trusts every other's certificate; a secret-rotate
// for another secret starts nothing; the leader's status names the step
// and the units it waits for; at the end every unit trusts the new CA
// alone and holds a certificate from it.
func TestRotation_LeaderDrivesTheThreeStepsAndEveryPairKeepsTrusting(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	all := []*unit{u0, u1, u2}
	m.leader = u0.name
	m.settleScope(all...)
	m.published(u1, u2)
	m.seedCA()
	uri := m.appData[charm.KeyCASecretID]
	round := func(when string) {
		for _, u := range []*unit{u1, u2, u0} {
			m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-changed"})
			if when != "" {
				everyPairTrusts(t, when+" after "+u.name, all...)
			}
		}
	}
	round("") // every unit provisions its material
	round("settled")
	oldCA := m.secrets[uri]["ca-cert"]
	for _, u := range all {
		tr, ok := peers.ParseCATrust(m.unitData[u.name][peers.KeyCATrust])
		if !ok || len(tr.Trusts) != 1 || tr.Trusts[0] != tr.Issuer {
			t.Fatalf("%s reports %q before any rotation", u.name, m.unitData[u.name][peers.KeyCATrust])
		}
	}

	m.mustRunEnv(u0, hookEnv{hook: "secret-rotate", secretID: "secret:d4k3s5pkf9d0d6q09999"})
	if got := m.appData[peers.KeyCARotation]; got != "" {
		t.Fatalf("secret-rotate of another secret started a rotation: %s", got)
	}
	m.mustRunEnv(u0, hookEnv{hook: "secret-rotate", secretID: uri})
	if got := peers.ParseRotation(m.appData[peers.KeyCARotation]); got.Step != 1 {
		t.Fatalf("after secret-rotate: ca-rotation %q", m.appData[peers.KeyCARotation])
	}
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"})
	if want := "rotating the cluster CA: step 1/3, waiting for dqlite-controller/1, dqlite-controller/2 to trust the new CA"; u0.status != [2]string{"maintenance", want} {
		t.Errorf("leader status %q, want maintenance %q", u0.status, want)
	}
	everyPairTrusts(t, "step 1 on the leader", all...)

	var steps []int
	for i := 0; i < 10 && m.appData[peers.KeyCARotation] != ""; i++ {
		if s := peers.ParseRotation(m.appData[peers.KeyCARotation]).Step; !slices.Contains(steps, s) {
			steps = append(steps, s)
		}
		round("rotating")
	}
	if m.appData[peers.KeyCARotation] != "" {
		t.Fatalf("the rotation never finished: ca-rotation %q", m.appData[peers.KeyCARotation])
	}
	if !slices.Equal(steps, []int{1, 2, 3}) {
		t.Errorf("steps seen %v, want 1, 2, 3", steps)
	}
	content := m.secrets[uri]
	if content["ca-cert"] == oldCA || content["ca-bundle"] != "" || content["ca-next-key"] != "" {
		t.Fatalf("final secret content keys: ca-cert changed %v, ca-bundle %q, ca-next-key set %v", content["ca-cert"] != oldCA, content["ca-bundle"], content["ca-next-key"] != "")
	}
	newCA, _ := clustertls.ParseCerts([]byte(content["ca-cert"]))
	for _, u := range all {
		mat := u.material(t)
		if len(mat.CAs) != 1 || !mat.CAs[0].Equal(newCA[0]) || mat.Cert.Leaf.CheckSignatureFrom(newCA[0]) != nil {
			t.Errorf("%s after the rotation: %d CAs, certificate from the new CA: %v", u.name, len(mat.CAs), mat.Cert.Leaf.CheckSignatureFrom(newCA[0]) == nil)
		}
		if strings.HasPrefix(u.status[1], "rotating") {
			t.Errorf("%s still says %q", u.name, u.status[1])
		}
	}
}

// update-status (every hook, in fact) renews a node certificate that has
// less than clustertls.RenewBefore left, with the same key, without an
// operator.
func TestRenewal_UpdateStatusRenewsACertificateNearExpiry(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.published(u1)
	m.seedCA()
	uri := m.appData[charm.KeyCASecretID]
	m.mustRun(u1, "update-status")
	ca, err := clustertls.ParseCA([]byte(m.secrets[uri]["ca-cert"]), []byte(m.secrets[uri]["ca-key"]))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _, err := clustertls.ReadKey(u1.tlsDir())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := clustertls.ParseKey(keyPEM)
	// Issued 70 days ago: 20 days left, under the 30-day threshold.
	old, err := ca.Issue(clustertls.NodeRequest{ControllerID: "1", IPs: []net.IP{net.ParseIP(u1.addr)}, PublicKey: &key.PublicKey,
		Now: time.Now().Add(-(clustertls.NodeValidity - clustertls.RenewBefore + 10*24*time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(u1.tlsDir(), clustertls.CertFile), old, 0o644); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(u1.material(t).Cert.Leaf.NotAfter); left > clustertls.RenewBefore {
		t.Fatalf("set-up: %s left", left)
	}
	m.mustRun(u1, "update-status")
	mat := u1.material(t)
	if left := time.Until(mat.Cert.Leaf.NotAfter); left < clustertls.NodeValidity-48*time.Hour {
		t.Errorf("after update-status the certificate has %s left, want about %s", left, clustertls.NodeValidity)
	}
	if !u1.logged("expires at") {
		t.Errorf("no log of the renewal: %q", u1.logs)
	}
	keyAfter, _, _ := clustertls.ReadKey(u1.tlsDir())
	if string(keyAfter) != string(keyPEM) {
		t.Error("the renewal replaced the node key")
	}
}

// secretCalls counts the unit's calls of tool whose arguments contain arg.
func secretCalls(u *unit, tool, arg string) int {
	n := 0
	for _, c := range u.calls {
		if strings.HasPrefix(c, tool+" ") && strings.Contains(c, arg) {
			n++
		}
	}
	return n
}

// A CA secret created before the rotate policy existed has none (nor the
// application data's ca-rotate-policy): the leader's next hook
// (upgrade-charm here) sets it with secret-set --rotate, no new revision,
// together with the data key, and never again; a non-leader never does.
func TestRotatePolicy_SetOnceOnACASecretCreatedWithoutIt(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.seedCA()
	uri := m.appData[charm.KeyCASecretID]
	delete(m.secretRotate, uri)
	delete(m.appData, charm.KeyCARotatePolicy)
	content := m.secrets[uri]

	m.mustRun(u1, "upgrade-charm")
	if _, ok := m.secretRotate[uri]; ok || secretCalls(u1, "secret-set", "--rotate") != 0 {
		t.Fatalf("a non-leader set the rotate policy: %q", u1.calls)
	}
	m.mustRun(u0, "upgrade-charm")
	if m.secretRotate[uri] != charm.CARotatePolicy || m.appData[charm.KeyCARotatePolicy] != charm.CARotatePolicy {
		t.Fatalf("after the leader's upgrade-charm: policy %q, application data %q", m.secretRotate[uri], m.appData[charm.KeyCARotatePolicy])
	}
	if m.secrets[uri]["ca-cert"] != content["ca-cert"] || m.secrets[uri]["ca-key"] != content["ca-key"] {
		t.Fatal("setting the rotate policy changed the secret's content")
	}
	for _, hook := range []string{"upgrade-charm", "update-status", "config-changed"} {
		m.mustRun(u0, hook)
	}
	if n := secretCalls(u0, "secret-set", "--rotate"); n != 1 {
		t.Errorf("the leader ran secret-set --rotate %d times, want once", n)
	}
}

// secret-remove for the CA secret: the leader removes the revision Juju
// names (JUJU_SECRET_REVISION), a non-leader and a secret-remove for
// another secret remove nothing, and a new CA secret carries the policy
// from its secret-add.
func TestPrune_LeaderRemovesTheObsoleteCASecretRevision(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.mustRun(u0, "install")
	uri := m.appData[charm.KeyCASecretID]
	if uri == "" || m.secretRotate[uri] != charm.CARotatePolicy || m.appData[charm.KeyCARotatePolicy] != charm.CARotatePolicy {
		t.Fatalf("new CA secret %q: policy %q, application data %q", uri, m.secretRotate[uri], m.appData[charm.KeyCARotatePolicy])
	}
	if n := secretCalls(u0, "secret-set", "--rotate"); n != 0 {
		t.Errorf("a CA secret created with its policy got secret-set --rotate %d times", n)
	}

	m.mustRunEnv(u1, hookEnv{hook: "secret-remove", secretID: uri, secretRevision: 2})
	m.mustRunEnv(u0, hookEnv{hook: "secret-remove", secretID: "secret:d4k3s5pkf9d0d6q09999", secretRevision: 2})
	if len(m.removedRevisions) != 0 {
		t.Fatalf("removed %v from a non-leader's or another secret's secret-remove", m.removedRevisions)
	}
	m.mustRunEnv(u0, hookEnv{hook: "secret-remove", secretID: uri, secretRevision: 2})
	if got := m.removedRevisions[uri]; !slices.Equal(got, []int{2}) {
		t.Fatalf("after the leader's secret-remove for revision 2: removed %v", got)
	}
	if !u0.logged("removed an obsolete revision of the cluster CA secret") {
		t.Errorf("no log of the removal: %q", u0.logs)
	}
}
