// Package rotation_test: the cluster CA rotation, driven by the charm, in
// the simulator with real controllerd processes and real TLS.
package rotation_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
)

const caLabel = "dqlite-controller-cluster-ca"

// tlsDir is a unit's TLS directory on the host.
func tlsDir(m *sim.Model, unit string) string {
	n := unit[strings.LastIndex(unit, "/")+1:]
	return filepath.Join(m.MachineDir(unit), "var-lib-juju", "agents", "controller-"+n, "tls")
}

func parseOne(t *testing.T, pemData string) *x509.Certificate {
	t.Helper()
	certs, err := clustertls.ParseCerts([]byte(pemData))
	if err != nil || len(certs) != 1 {
		t.Fatalf("cannot parse one certificate (%v): %q", err, pemData)
	}
	return certs[0]
}

// rotatedEverywhere says what is left before every unit trusts only ca and
// holds a certificate issued by it ("" when nothing is).
func rotatedEverywhere(m *sim.Model, ca *x509.Certificate) string {
	for _, u := range simtest.Units(m) {
		dir := tlsDir(m, u)
		bundle, err := os.ReadFile(filepath.Join(dir, clustertls.CAFile))
		if err != nil {
			return err.Error()
		}
		cas, err := clustertls.ParseCerts(bundle)
		if err != nil || len(cas) != 1 || !cas[0].Equal(ca) {
			return fmt.Sprintf("%s trusts %d CAs (want the new one alone): %v", u, len(cas), err)
		}
		crt, err := os.ReadFile(filepath.Join(dir, clustertls.CertFile))
		if err != nil {
			return err.Error()
		}
		certs, err := clustertls.ParseCerts(crt)
		if err != nil || certs[0].CheckSignatureFrom(ca) != nil {
			return fmt.Sprintf("%s's certificate is not the new CA's", u)
		}
	}
	if rot := m.RelationData("db-cluster")[m.App()]["ca-rotation"]; rot != "" {
		return "the application data still holds ca-rotation " + rot
	}
	return ""
}

// waitRotated waits until the CA differs from old and every unit has
// finished the rotation; it returns the new CA and the rotation statuses
// the leader showed meanwhile.
func waitRotated(t *testing.T, m *sim.Model, old *x509.Certificate) (*x509.Certificate, []string) {
	t.Helper()
	var ca *x509.Certificate
	var seen []string
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), 200*time.Millisecond, func() error {
		for _, u := range m.Status().Units {
			if u.Leader && strings.HasPrefix(u.Message, "rotating the cluster CA") && !slices.Contains(seen, u.Message) {
				seen = append(seen, u.Message)
			}
		}
		pemData := m.ControllerCACert()
		if pemData == "" {
			return fmt.Errorf("no CA secret")
		}
		ca = parseOne(t, pemData)
		if ca.Equal(old) {
			return fmt.Errorf("the CA secret still issues from the old CA")
		}
		if left := rotatedEverywhere(m, ca); left != "" {
			return fmt.Errorf("%s", left)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the rotation never finished: %v\nstatus:\n%s", err, m.StatusTable())
	}
	return ca, seen
}

// handshake runs a TLS 1.2 handshake (client certificates are verified in
// the handshake itself in 1.2) from unit's machine to addr with the
// certificate and key in dir (a path on that machine); it returns the
// error, nil when the server accepted the certificate.
func handshake(ctx context.Context, m *sim.Model, unit, addr, dir string) error {
	cmd := fmt.Sprintf("openssl s_client -tls1_2 -connect %s -servername %s -cert %s/node.crt -key %s/node.key </dev/null",
		addr, clustertls.ServerName, dir, dir)
	out, errOut, err := m.Exec(ctx, unit, "sh", "-c", cmd)
	if err != nil {
		return fmt.Errorf("%v: %s", err, simtest.Tail(string(errOut)+string(out), 5))
	}
	return nil
}

// agentCACerts are the certificates of agent machine id's agent.conf
// cacert:.
func agentCACerts(m *sim.Model, id int) ([]*x509.Certificate, error) {
	pemData, err := apiagent.ReadCACert(m.AgentConfigPath(id))
	if err != nil {
		return nil, err
	}
	return clustertls.ParseCerts(pemData)
}

// agentReachesAPI fetches the address lists from machine id, as its agent
// would: over HTTPS to each controller, verified against the agent.conf's
// cacert (copied to a file on the machine) with the pinned server name.
func agentReachesAPI(ctx context.Context, m *sim.Model, id int) error {
	pemData, err := apiagent.ReadCACert(m.AgentConfigPath(id))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.MachineDirOf(id), "var-lib-juju", "agent-cacert.pem"), pemData, 0o644); err != nil {
		return err
	}
	addrs, err := m.AgentAPIAddresses(id)
	if err != nil || len(addrs) == 0 {
		return fmt.Errorf("no API address in agent.conf (%v)", err)
	}
	for _, a := range addrs {
		host, port, _ := strings.Cut(a, ":")
		out, errOut, err := m.ExecMachine(ctx, id, "curl", "-sS", "--fail", "--max-time", "10", "--cacert", "/var/lib/juju/agent-cacert.pem",
			"--connect-to", clustertls.ServerName+":"+port+":"+host+":"+port, "https://"+clustertls.ServerName+":"+port+"/v1/api-addresses")
		if err != nil {
			return fmt.Errorf("%s: %v: %s", a, err, simtest.Tail(string(errOut), 3))
		}
		if !strings.Contains(string(out), `"agents"`) {
			return fmt.Errorf("%s answered %q", a, out)
		}
	}
	return nil
}

// 3 units, a writer writing through all of them, and an agent machine
// running controllerd agent (agent.conf's cacert the CA as the provisioner
// wrote it), then rotate-ca: refused on a non-leader (naming the leader),
// started on the leader; it ends by itself with every node certificate
// issued by the new CA and the old CA gone from every bundle, one cluster,
// no write failed or lost, the longest time without an acknowledged write
// below one election (the bound: 5 s), a client certificate of
// the old CA refused at the Dqlite port while a current one is accepted,
// the agent's cacert the new CA alone, with which it still reaches every
// controller's API (it learnt old and new from its watch during step 1,
// or it could not have verified anyone after step 2), and the CA secret
// pruned to its latest revision (no revision with the old CA's key left).
func TestRotation_RotateCAWithAWriterRunning(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{FirstUnitLeads: true})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	simtest.WaitActive(t, m)
	units := simtest.Units(m)
	agent, err := m.AddAgentMachine(sim.AgentMachineSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if err := probe.Eventually(simtest.CtxFor(t, time.Minute), 200*time.Millisecond, func() error {
		return agentReachesAPI(simtest.CtxFor(t, 30*time.Second), m, agent)
	}); err != nil {
		t.Fatalf("the agent machine cannot reach the API before the rotation: %v", err)
	}
	leader := m.Status().Leader
	oldCA := parseOne(t, m.ControllerCACert())

	// Keep a copy of the leader's current (old-CA) certificate and key on
	// its machine, to try them after the rotation.
	oldDir := filepath.Join(m.MachineDir(leader), "var-lib-juju", "old-tls")
	if err := os.MkdirAll(oldDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{clustertls.CertFile, clustertls.KeyFile} {
		data, err := os.ReadFile(filepath.Join(tlsDir(m, leader), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(oldDir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	w := simtest.StartWriter(t, m, "rotation_writes", units)
	time.Sleep(2 * time.Second) // some writes before

	var other string
	for _, u := range units {
		if u != leader {
			other = u
			break
		}
	}
	ctx := simtest.CtxFor(t, 3*time.Minute)
	res, err := m.RunAction(ctx, other, "rotate-ca")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != sim.ActionFailed || !strings.Contains(res.Message, leader) {
		t.Errorf("rotate-ca on the non-leader %s: %s %q, want failed naming the leader %s", other, res.Status, res.Message, leader)
	}
	started := time.Now()
	res, err = m.RunAction(ctx, leader, "rotate-ca")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != sim.ActionCompleted {
		t.Fatalf("rotate-ca on the leader: %s %q\n%s", res.Status, res.Message, res.Stderr)
	}
	t.Logf("rotate-ca: %v", res.Results["summary"])
	res, err = m.RunAction(ctx, leader, "rotate-ca")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != sim.ActionFailed || !strings.Contains(res.Message, "already in progress") {
		t.Errorf("a second rotate-ca during the rotation: %s %q, want refused as already in progress", res.Status, res.Message)
	}

	newCA, statuses := waitRotated(t, m, oldCA)
	t.Logf("rotation finished %s after rotate-ca; the leader's statuses meanwhile: %q", time.Since(started).Round(100*time.Millisecond), statuses)
	if len(statuses) == 0 {
		t.Error("the leader's status never said that it was rotating the cluster CA")
	}
	for _, st := range statuses {
		if !regexp.MustCompile(`^rotating the cluster CA: step [123]/3(, waiting for .+ to (trust the new CA|re-issue (its certificate|their certificates)|drop the old CA))?$`).MatchString(st) {
			t.Errorf("unexpected rotation status %q", st)
		}
	}
	time.Sleep(2 * time.Second) // some writes after
	r := w.Check(t, units[0])
	if r.Failed != 0 {
		t.Errorf("%d writes failed during the rotation (last error: %s)", r.Failed, r.LastError)
	}
	if r.Acked == 0 {
		t.Fatal("no write was acknowledged")
	}
	// No failed write is the test of "no write fails for longer than one
	// election" (above); the gap is a figure, bounded only against a
	// stalled cluster: each write is a process started in a machine's
	// namespaces, and on a loaded 2-core machine that alone can take
	// seconds (tests/e2e/rolling, writeStall).
	t.Logf("writer: %s", r)
	if r.LongestOutage >= 10*time.Second {
		t.Errorf("longest time without an acknowledged write %s: the cluster stalled (over 10 s)", r.LongestOutage)
	}
	simtest.WaitCluster(t, m)

	// The old CA's certificate is refused; the current one is accepted.
	addr := m.RelationData("db-cluster")[leader]["db-bind-address"] + ":17666"
	if err := handshake(ctx, m, leader, addr, "/var/lib/juju/agents/controller-"+leader[strings.LastIndex(leader, "/")+1:]+"/tls"); err != nil {
		t.Errorf("the current node certificate was refused at %s: %v", addr, err)
	}
	if err := handshake(ctx, m, leader, addr, "/var/lib/juju/old-tls"); err == nil {
		t.Errorf("a client certificate of the old CA was accepted at %s after the rotation", addr)
	}
	bundle, _ := os.ReadFile(filepath.Join(tlsDir(m, leader), clustertls.CAFile))
	if bytes.Contains(bundle, oldCA.Raw) || !newCA.Equal(parseOne(t, string(bundle))) {
		t.Error("the leader's bundle is not the new CA alone")
	}

	// The agent followed: its cacert is the new CA alone, and with it the
	// agent reaches every controller.
	err = probe.Eventually(simtest.CtxFor(t, time.Minute), 200*time.Millisecond, func() error {
		cas, err := agentCACerts(m, agent)
		if err != nil {
			return err
		}
		if len(cas) != 1 || !cas[0].Equal(newCA) {
			return fmt.Errorf("the agent's cacert holds %d CAs, not the new CA alone", len(cas))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the agent's cacert did not follow the rotation: %v\nagent log:\n%s", err, simtest.Tail(m.MachineServiceLog(agent), 20))
	}
	if err := agentReachesAPI(ctx, m, agent); err != nil {
		t.Errorf("the agent machine cannot reach the API with its cacert after the rotation: %v", err)
	}

	// The old CA's key is pruned from the secret's history: Juju runs
	// secret-remove on the leader for every revision no unit tracks, and
	// the leader removes it, until the latest revision (the new CA's)
	// alone is left.
	err = probe.Eventually(simtest.CtxFor(t, time.Minute), 200*time.Millisecond, func() error {
		existing, obsolete, ok := m.ObsoleteSecretRevisions(caLabel)
		if !ok || len(existing) != 1 {
			return fmt.Errorf("the CA secret's revisions are %v (obsolete %v), want the latest alone", existing, obsolete)
		}
		return nil
	})
	if err != nil {
		t.Errorf("old CA secret revisions were not pruned: %v", err)
	}
	removes := 0
	for _, u := range units {
		for _, h := range m.History(u) {
			if h.Hook == "secret-remove" && h.ExitCode == 0 {
				removes++
			}
		}
	}
	t.Logf("secret-remove hooks run: %d", removes)
	t.Logf("agent log:\n%s", simtest.Tail(m.MachineServiceLog(agent), 8))
}

// The CA secret carries the yearly rotate policy; when Juju says the
// rotation is due, secret-rotate on the leader starts the same rotation.
// It survives a leader hook killed as it writes the next step (nothing of
// that hook commits; the retry re-derives the step from the data) and a
// leader change at step 2 (the new leader resumes from the secret and the
// relation), and Juju's next rotation is a year after (the hook added a
// revision).
func TestRotation_SecretRotateStartsItAndItSurvivesAKilledHookAndALeaderChange(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{FirstUnitLeads: true})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	policy, _, ok := m.SecretRotation(caLabel)
	if !ok || policy != "yearly" {
		t.Fatalf("the CA secret's rotate policy is %q (found %v), want yearly", policy, ok)
	}
	oldCA := parseOne(t, m.ControllerCACert())
	first := m.Status().Leader
	// The leader's hook that moves to the next step (whichever hook sees
	// the last report) is killed as it calls secret-set.
	for _, hook := range []string{"db-cluster-relation-changed", "secret-changed", "update-status"} {
		m.KillHookAt(first, hook, "secret-set")
	}
	due := time.Now()
	if err := m.RotateSecretNow(caLabel); err != nil {
		t.Fatal(err)
	}
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), 100*time.Millisecond, func() error {
		if rot := m.RelationData("db-cluster")[m.App()]["ca-rotation"]; !strings.Contains(rot, `"step":2`) {
			return fmt.Errorf("ca-rotation is %q", rot)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the rotation never reached step 2: %v\nstatus:\n%s", err, m.StatusTable())
	}
	if err := m.MoveLeadership(""); err != nil {
		t.Fatal(err)
	}
	waitRotated(t, m, oldCA)
	ran, killed := false, 0
	for _, h := range m.History(first) {
		ran = ran || h.Hook == "secret-rotate" && h.ExitCode == 0
		if h.ExitCode != 0 {
			killed++
		}
	}
	if !ran {
		t.Errorf("the leader %s never ran secret-rotate", first)
	}
	if killed == 0 {
		t.Errorf("no hook of %s was killed as it wrote the next step: %v", first, m.History(first))
	}
	if now := m.Status().Leader; now == first {
		t.Errorf("leadership did not move from %s", first)
	}
	if _, next, _ := m.SecretRotation(caLabel); next.Before(due.AddDate(1, 0, 0).Add(-time.Minute)) {
		t.Errorf("the next rotation is due %s, want a year after %s", next, due)
	}
	simtest.WaitCluster(t, m)
}
