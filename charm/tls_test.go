package charm_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/charm"
	"github.com/juju/dqlite-controller/clustertls"
)

func (u *unit) tlsDir() string { return clustertls.Dir(u.confPath()) }

func (u *unit) material(t *testing.T) *clustertls.Material {
	t.Helper()
	mat, err := clustertls.Load(u.tlsDir(), time.Now())
	if err != nil {
		t.Fatalf("%s: %v", u.name, err)
	}
	return mat
}

// The leader creates the cluster CA once, in an application-owned secret
// whose URI alone travels in the application data; every unit issues its
// own certificate for its bind address from it, with a key made on its
// machine (mode 0600); a later leader reuses the CA; a changed bind
// address (juju bind) re-issues the certificate with the same key.
func TestClusterCA_CreatedOnceEachUnitIssuesItsOwnCertificate(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u1.name
	m.settleScope(u0, u1)

	// A non-leader before the CA exists waits and writes no material.
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u1.name})
	if u0.status[0] != "waiting" {
		t.Fatalf("%s status = %v", u0.name, u0.status)
	}
	if _, err := os.Stat(u0.tlsDir()); !os.IsNotExist(err) {
		t.Fatalf("TLS material before the CA exists: %v", err)
	}

	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u0.name})
	uri := m.appData[charm.KeyCASecretID]
	if !strings.HasPrefix(uri, "secret:") || len(m.secrets) != 1 {
		t.Fatalf("CA secret %q, secrets %v", uri, len(m.secrets))
	}
	for k, v := range m.appData {
		if strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, "CERTIFICATE") {
			t.Fatalf("application data %s carries PEM", k)
		}
	}
	for _, bag := range m.unitData {
		for k, v := range bag {
			if strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, "CERTIFICATE") {
				t.Fatalf("unit data %s carries PEM", k)
			}
		}
	}
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"})
	for _, u := range []*unit{u0, u1} {
		mat := u.material(t)
		if mat.ControllerID != u.agentID() || mat.Cert.Leaf.IPAddresses[0].String() != u.addr {
			t.Fatalf("%s certificate: id %s, IPs %v", u.name, mat.ControllerID, mat.Cert.Leaf.IPAddresses)
		}
		st, err := os.Stat(filepath.Join(u.tlsDir(), clustertls.KeyFile))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s key: %v %v", u.name, st.Mode(), err)
		}
	}
	if !u0.material(t).Pool.Equal(u1.material(t).Pool) {
		t.Fatal("the units trust different CAs")
	}

	// Leadership moves: the new leader reuses the CA.
	m.leader = u0.name
	m.mustRun(u0, "leader-elected")
	if len(m.secrets) != 1 || m.appData[charm.KeyCASecretID] != uri {
		t.Fatalf("a new leader made another CA: %v, %s", len(m.secrets), m.appData[charm.KeyCASecretID])
	}

	// juju bind: unit 1's address changes; its certificate follows, its
	// key stays.
	keyBefore, _ := os.ReadFile(filepath.Join(u1.tlsDir(), clustertls.KeyFile))
	u1.addr = "10.0.5.2"
	u1.setAddresses("10.0.5.2")
	m.mustRun(u1, "config-changed")
	mat := u1.material(t)
	if got := mat.Cert.Leaf.IPAddresses[0].String(); got != "10.0.5.2" {
		t.Fatalf("certificate after juju bind names %s", got)
	}
	keyAfter, _ := os.ReadFile(filepath.Join(u1.tlsDir(), clustertls.KeyFile))
	if string(keyBefore) != string(keyAfter) {
		t.Fatal("re-issuing replaced the node key")
	}
	if !u1.logged("bind address changed") {
		t.Fatalf("no log of the re-issue: %q", u1.logs)
	}
}
