package apiagent_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
)

const agentConf = `# written by the machine agent
tag: machine-3
datadir: /var/lib/juju
apiaddresses:
- 10.0.0.1:17070
- 10.0.0.2:17070
controller: controller-deadbeef
`

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// Rewriting the address list keeps the file's other keys, and an unchanged
// list does not rewrite the file.
func TestWriteAddresses_KeepsOtherKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.conf")
	if err := os.WriteFile(path, []byte(agentConf), 0o640); err != nil {
		t.Fatal(err)
	}
	before := inode(t, path)
	changed, err := apiagent.WriteAddresses(path, []string{"10.0.0.1:17070", "10.0.0.2:17070"})
	if err != nil || changed {
		t.Fatalf("same list: changed=%v err=%v, want no write", changed, err)
	}
	if inode(t, path) != before {
		t.Fatal("file replaced although the list did not change")
	}
	changed, err = apiagent.WriteAddresses(path, []string{"10.0.0.3:17070"})
	if err != nil || !changed {
		t.Fatalf("new list: changed=%v err=%v", changed, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"tag": "machine-3", "datadir": "/var/lib/juju", "controller": "controller-deadbeef",
		"apiaddresses": []any{"10.0.0.3:17070"},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("file now %v, want %v", m, want)
	}
	if !strings.HasPrefix(string(data), "# written by the machine agent\n") {
		t.Fatalf("comment lost:\n%s", data)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640 kept", fi.Mode().Perm())
	}
	got, err := apiagent.ReadAddresses(path)
	if err != nil || !slices.Equal(got, []string{"10.0.0.3:17070"}) {
		t.Fatalf("ReadAddresses = %v, %v", got, err)
	}
}

// A missing agent config file is created; a broken one is refused and left
// as it is.
func TestWriteAddresses_MissingAndBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.conf")
	if changed, err := apiagent.WriteAddresses(path, []string{"10.0.0.1:17070"}); err != nil || !changed {
		t.Fatalf("new file: changed=%v err=%v", changed, err)
	}
	if got, _ := apiagent.ReadAddresses(path); !slices.Equal(got, []string{"10.0.0.1:17070"}) {
		t.Fatalf("new file holds %v", got)
	}
	broken := filepath.Join(dir, "broken.conf")
	for _, content := range []string{"- a list\n- not a mapping\n", "key: [unclosed\n"} {
		if err := os.WriteFile(broken, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := apiagent.WriteAddresses(broken, []string{"10.0.0.1:17070"}); err == nil {
			t.Fatalf("broken file %q accepted", content)
		}
		if data, _ := os.ReadFile(broken); string(data) != content {
			t.Fatalf("broken file was modified: %q", data)
		}
	}
	if _, err := apiagent.WriteAddresses(path, nil); err == nil {
		t.Fatal("empty list accepted")
	}
}

type step struct {
	addrs   []string
	version string
	err     error
	// ca and verifiedBy are the update's CA bundle and verifying CA.
	ca         []byte
	verifiedBy *x509.Certificate
}

// scriptedSource hands out steps one Watch call at a time; the test's send
// of step k+1 completes only when the updater asks again, i.e. after it
// has handled step k.
type scriptedSource struct {
	steps chan step
	mu    sync.Mutex
	asked []string
}

func (s *scriptedSource) Watch(ctx context.Context, last string) (apiagent.Update, error) {
	s.mu.Lock()
	s.asked = append(s.asked, last)
	s.mu.Unlock()
	select {
	case st := <-s.steps:
		return apiagent.Update{Addresses: st.addrs, Version: st.version, CACert: st.ca, VerifiedBy: st.verifiedBy}, st.err
	case <-ctx.Done():
		return apiagent.Update{}, ctx.Err()
	}
}

// The updater rewrites the agent config from the watch, and keeps the last
// list when the controllers answer with an empty one.
func TestUpdater_FollowsTheWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.conf")
	if err := os.WriteFile(path, []byte(agentConf), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &scriptedSource{steps: make(chan step)}
	u := apiagent.NewUpdater(path, src, nil)
	u.SetRetryDelay(time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- u.Run(ctx) }()

	send := func(s step) { src.steps <- s }
	// handled waits until the updater came back for the next step.
	handled := func() { send(step{err: errors.New("long poll timed out")}) }

	send(step{addrs: []string{"10.0.0.5:17070", "10.0.0.6:17070"}, version: "v1"})
	handled()
	if got, _ := apiagent.ReadAddresses(path); !slices.Equal(got, []string{"10.0.0.5:17070", "10.0.0.6:17070"}) {
		t.Fatalf("after v1: %v", got)
	}
	ino := inode(t, path)
	send(step{addrs: []string{}, version: "v2"}) // controllers answer with nothing
	handled()
	if got, _ := apiagent.ReadAddresses(path); !slices.Equal(got, []string{"10.0.0.5:17070", "10.0.0.6:17070"}) {
		t.Fatalf("empty list replaced the last known one: %v", got)
	}
	send(step{addrs: []string{"10.0.0.5:17070", "10.0.0.6:17070"}, version: "v3"}) // same list, new version
	handled()
	if inode(t, path) != ino {
		t.Fatal("file rewritten without a change")
	}
	send(step{addrs: []string{"10.0.0.7:17070"}, version: "v4"})
	handled()
	if got, _ := apiagent.ReadAddresses(path); !slices.Equal(got, []string{"10.0.0.7:17070"}) {
		t.Fatalf("after v4: %v", got)
	}
	cancel()
	<-done
	src.mu.Lock()
	defer src.mu.Unlock()
	// The updater passes back the version it last saw (retrying after an
	// error with the same one).
	want := []string{"", "v1", "v1", "v2", "v2", "v3", "v3", "v4"}
	if len(src.asked) < len(want) || !slices.Equal(src.asked[:len(want)], want) {
		t.Fatalf("versions asked %v, want prefix %v", src.asked, want)
	}
}

func TestDial_TriesAddressesInShuffledOrder(t *testing.T) {
	var mu sync.Mutex
	var order []string
	dial := func(ctx context.Context, addr string) (string, error) {
		mu.Lock()
		order = append(order, addr)
		mu.Unlock()
		if addr == "a" {
			return "conn-a", nil
		}
		return "", errors.New("refused")
	}
	reverse := func(a []string) { slices.Reverse(a) }
	addrs := []string{"a", "b", "c"}
	conn, addr, err := apiagent.Dial(context.Background(), addrs, dial, nil, apiagent.DialOptions{Shuffle: reverse})
	if err != nil || addr != "a" || conn != "conn-a" {
		t.Fatalf("Dial = %q %q %v", conn, addr, err)
	}
	// Failures start the next attempt at once, so the order is exactly
	// the shuffled one.
	if !slices.Equal(order, []string{"c", "b", "a"}) {
		t.Fatalf("dial order %v, want the shuffled order c b a", order)
	}
	if !slices.Equal(addrs, []string{"a", "b", "c"}) {
		t.Fatalf("caller's slice reordered: %v", addrs)
	}
	// The default shuffle is random: over many dials every address comes first.
	first := map[string]bool{}
	for i := 0; i < 200 && len(first) < 3; i++ {
		_, _, _ = apiagent.Dial(context.Background(), addrs, func(ctx context.Context, a string) (string, error) {
			mu.Lock()
			if len(first) < 3 {
				first[a] = true
			}
			mu.Unlock()
			return a, nil
		}, nil, apiagent.DialOptions{})
	}
	if len(first) != 3 {
		t.Fatalf("only %v ever dialled first", first)
	}
}

// Juju's agent.conf carries the controllers' CA as a multi-line cacert:
// value (juju/juju agent/agent.go, format 2.0); a file without it cannot
// verify anyone, and says so.
func TestReadCACert(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.conf")
	pem := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	doc := "tag: machine-3\ncacert: |\n  " + strings.ReplaceAll(strings.TrimSpace(pem), "\n", "\n  ") + "\napiaddresses:\n- 10.0.0.1:17070\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := apiagent.ReadCACert(path)
	if err != nil || string(got) != pem {
		t.Fatalf("ReadCACert = %q, %v", got, err)
	}
	// Writing the addresses keeps it.
	if _, err := apiagent.WriteAddresses(path, []string{"10.0.0.2:17070"}); err != nil {
		t.Fatal(err)
	}
	if got, err := apiagent.ReadCACert(path); err != nil || string(got) != pem {
		t.Fatalf("after WriteAddresses: %q, %v", got, err)
	}
	if err := os.WriteFile(path, []byte("tag: machine-3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := apiagent.ReadCACert(path); err == nil || !strings.Contains(err.Error(), "has no cacert") {
		t.Fatalf("no cacert: %v", err)
	}
}

func makeCA(t *testing.T) *clustertls.CA {
	t.Helper()
	ca, err := clustertls.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// A CA rotation as an agent sees it: the controllers' bundle goes from
// the old CA to old and new, then to the new one alone, each learnt over a
// connection the old (then the new) CA verified: cacert: follows, written
// atomically and only on change, every other key kept. A bundle from an
// unverified connection, one without the CA that verified the sender, one
// holding a non-CA certificate and garbage are all refused, and the file
// keeps its cacert.
func TestUpdater_FollowsTheControllersCABundle(t *testing.T) {
	oldCA, nextCA := makeCA(t), makeCA(t)
	other := makeCA(t)
	path := filepath.Join(t.TempDir(), "agent.conf")
	conf := "# agent.conf\ntag: machine-4\ncacert: |\n  " + strings.ReplaceAll(strings.TrimSpace(string(oldCA.CertPEM)), "\n", "\n  ") +
		"\napiaddresses:\n- 10.0.0.1:17070\nnonce: machine-4:sim\n"
	if err := os.WriteFile(path, []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	src := &scriptedSource{steps: make(chan step)}
	u := apiagent.NewUpdater(path, src, nil)
	u.SetRetryDelay(time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- u.Run(ctx) }()
	defer func() { cancel(); <-done }()
	send := func(s step) { src.steps <- s }
	handled := func() { send(step{err: errors.New("long poll timed out")}) }
	addrs := []string{"10.0.0.1:17070"}
	cacertIs := func(when string, want ...*clustertls.CA) {
		t.Helper()
		got, err := apiagent.ReadCACert(path)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		certs, err := clustertls.ParseCerts(got)
		if err != nil || len(certs) != len(want) {
			t.Fatalf("%s: cacert holds %d certificates (%v), want %d", when, len(certs), err, len(want))
		}
		for i, c := range certs {
			if !c.Equal(want[i].Cert) {
				t.Fatalf("%s: cacert's certificate %d is not the expected CA", when, i)
			}
		}
		data, _ := os.ReadFile(path)
		for _, keep := range []string{"# agent.conf", "tag: machine-4", "nonce: machine-4:sim", "- 10.0.0.1:17070"} {
			if !strings.Contains(string(data), keep) {
				t.Fatalf("%s: %q lost from the agent config:\n%s", when, keep, data)
			}
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
			t.Fatalf("%s: mode %04o, want the file's 0640 kept", when, fi.Mode().Perm())
		}
	}
	both := clustertls.Bundle(oldCA.CertPEM, nextCA.CertPEM)

	// Step 1: the controllers trust both; the old CA verified them.
	send(step{addrs: addrs, version: "v1", ca: both, verifiedBy: oldCA.Cert})
	handled()
	cacertIs("step 1", oldCA, nextCA)
	ino := inode(t, path)
	send(step{addrs: addrs, version: "v2", ca: both, verifiedBy: oldCA.Cert}) // the same bundle
	handled()
	send(step{addrs: addrs, version: "v2b", ca: clustertls.Bundle(nextCA.CertPEM, oldCA.CertPEM), verifiedBy: oldCA.Cert}) // the same CAs, reordered
	handled()
	if inode(t, path) != ino {
		t.Fatal("agent config rewritten though neither the list nor the bundle changed")
	}
	// Refused: each leaves cacert as it is.
	for _, bad := range []step{
		{addrs: addrs, version: "v3", ca: nextCA.CertPEM},                                         // unverified connection
		{addrs: addrs, version: "v4", ca: other.CertPEM, verifiedBy: oldCA.Cert},                  // drops the CA that verified the sender
		{addrs: addrs, version: "v5", ca: []byte("not PEM"), verifiedBy: oldCA.Cert},              // garbage
		{addrs: addrs, version: "v6", ca: leafOf(t, oldCA), verifiedBy: oldCA.Cert},               // not a CA certificate
		{addrs: nil, version: "v7", ca: clustertls.Bundle(other.CertPEM), verifiedBy: oldCA.Cert}, // with an empty list
	} {
		send(bad)
		handled()
		cacertIs("after a refused bundle "+bad.version, oldCA, nextCA)
	}
	if inode(t, path) != ino {
		t.Fatal("agent config rewritten by a refused bundle")
	}
	// Step 2: the controllers present new-CA certificates (verified by
	// the new CA now in cacert), still trusting both; step 3: new alone.
	send(step{addrs: addrs, version: "v8", ca: both, verifiedBy: nextCA.Cert})
	handled()
	cacertIs("step 2", oldCA, nextCA) // the same CAs: not rewritten
	if inode(t, path) != ino {
		t.Fatal("agent config rewritten at step 2, whose bundle holds the same CAs")
	}
	send(step{addrs: addrs, version: "v9", ca: nextCA.CertPEM, verifiedBy: nextCA.Cert})
	handled()
	cacertIs("step 3", nextCA)
	if got, _ := apiagent.ReadAddresses(path); !slices.Equal(got, addrs) {
		t.Fatalf("addresses changed: %v", got)
	}
}

// leafOf is a node certificate issued by ca (not a CA certificate).
func leafOf(t *testing.T, ca *clustertls.CA) []byte {
	t.Helper()
	key, err := clustertls.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	pem, err := ca.Issue(clustertls.NodeRequest{ControllerID: "0", IPs: []net.IP{net.ParseIP("10.0.0.1")}, PublicKey: &key.PublicKey, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return pem
}

// WriteCACert writes a literal block Juju's way, which ReadCACert reads
// back; it refuses an empty bundle.
func TestWriteCACert_RoundTripsAndRefusesEmpty(t *testing.T) {
	ca := makeCA(t)
	path := filepath.Join(t.TempDir(), "agent.conf")
	if err := os.WriteFile(path, []byte("tag: machine-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	changed, err := apiagent.WriteCACert(path, ca.CertPEM)
	if err != nil || !changed {
		t.Fatalf("WriteCACert = %v, %v", changed, err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "cacert: |") {
		t.Errorf("cacert not a literal block:\n%s", data)
	}
	got, err := apiagent.ReadCACert(path)
	if err != nil || strings.TrimSpace(string(got)) != strings.TrimSpace(string(ca.CertPEM)) {
		t.Fatalf("read back %q, %v", got, err)
	}
	if changed, err := apiagent.WriteCACert(path, ca.CertPEM); err != nil || changed {
		t.Fatalf("the same bundle again: changed %v, %v", changed, err)
	}
	if _, err := apiagent.WriteCACert(path, []byte(" \n")); err == nil {
		t.Fatal("an empty bundle accepted")
	}
}
