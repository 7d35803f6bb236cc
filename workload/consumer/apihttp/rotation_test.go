package apihttp_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
	"github.com/juju/dqlite-controller/workload/consumer/apihttp"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
	"github.com/juju/dqlite-controller/workload/internal/testwait"
)

// tlsBackend is a member whose CA bundle is its guard's material.
type tlsBackend struct{ g *clustertls.Guard }

func (b tlsBackend) Health(context.Context) apiserver.Health { return apiserver.Health{} }
func (b tlsBackend) Lease() (apiserver.Lease, error)         { return apiserver.Lease{}, nil }
func (b tlsBackend) Member() (bool, <-chan struct{})         { return true, make(chan struct{}) }
func (b tlsBackend) CABundle() []byte                        { return b.g.Material().CAPEM }

// agentClient is `controllerd agent`'s client: the server verified
// against caPEM with the server name pinned.
func agentClient(caPEM []byte) (*http.Client, error) {
	pool, err := clustertls.PoolFromPEM(caPEM)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: clustertls.ClientConfig(pool)}}, nil
}

func writeAgentConf(t *testing.T, path, addr string, ca []byte) {
	t.Helper()
	conf := "tag: machine-7\ncacert: |\n  " + strings.ReplaceAll(strings.TrimSpace(string(ca)), "\n", "\n  ") + "\napiaddresses:\n- " + addr + "\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A CA rotation as a connected agent lives it, over real TLS: the
// controller's bundle gains the new CA (step 1) while it still presents
// its old-CA certificate, and the agent, watching, writes both into its
// cacert; the controller re-issues from the new CA (step 2) and the agent
// still verifies it; the old CA is dropped (step 3) and cacert holds the
// new CA alone. An agent that was offline from before step 1 (its cacert
// the old CA only) can no longer verify the controller after step 2: its
// cacert must be re-provisioned.
func TestAgent_FollowsACARotationOverTLS(t *testing.T) {
	now := time.Now()
	oldCA, err := clustertls.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	nextCA, err := clustertls.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	provision := func(ca *clustertls.CA, bundle ...[]byte) *clustertls.Material {
		t.Helper()
		if _, _, err := clustertls.Provision(tlsDir, ca, clustertls.Bundle(bundle...), "0", ips, time.Now()); err != nil {
			t.Fatal(err)
		}
		m, err := clustertls.Load(tlsDir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	g := clustertls.NewGuard(provision(oldCA, oldCA.CertPEM), nil)

	var mu sync.Mutex
	var cs []apiaddr.Controller
	w := apiaddr.NewWatcher(lists(func() []apiaddr.Controller { mu.Lock(); defer mu.Unlock(); return cs }), 5*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	srv := httptest.NewUnstartedServer(apiserver.Handler(tlsBackend{g}, w))
	srv.TLS = g.APIServerConfig()
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	mu.Lock()
	cs = []apiaddr.Controller{{ID: "0", Addresses: []apiaddr.Address{{HostPort: addr, Scope: apiaddr.ScopeMachineLocal, IsAgent: true}}}}
	mu.Unlock()

	dir := t.TempDir()
	conf, offline := filepath.Join(dir, "agent.conf"), filepath.Join(dir, "offline.conf")
	writeAgentConf(t, conf, addr, oldCA.CertPEM)
	writeAgentConf(t, offline, addr, oldCA.CertPEM)
	src := &apihttp.AgentSource{
		Addresses:     func() ([]string, error) { return apiagent.ReadAddresses(conf) },
		CurrentClient: apihttp.AgentClients(conf, agentClient),
		Scheme:        "https",
		WatchTimeout:  time.Minute, // a change must end the long poll, not its timeout
	}
	u := apiagent.NewUpdater(conf, src, nil)
	u.SetRetryDelay(10 * time.Millisecond)
	done := make(chan error)
	go func() { done <- u.Run(ctx) }()
	defer func() { cancel(); <-done }()
	cacertHolds := func(want ...*clustertls.CA) func() bool {
		return func() bool {
			pem, err := apiagent.ReadCACert(conf)
			if err != nil {
				return false
			}
			certs, err := clustertls.ParseCerts(pem)
			if err != nil || len(certs) != len(want) {
				return false
			}
			for i := range certs {
				if !certs[i].Equal(want[i].Cert) {
					return false
				}
			}
			return true
		}
	}
	reach := func(path string) error {
		clients := apihttp.AgentClients(path, agentClient)
		c, err := clients()
		if err != nil {
			return err
		}
		resp, err := c.Get(srv.URL + apiwire.PathAddresses)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	testwait.For(t, "the agent to watch the controller", func() bool { return reach(conf) == nil })

	// Step 1: both trusted, the old-CA certificate still presented.
	g.SetMaterial(provision(oldCA, oldCA.CertPEM, nextCA.CertPEM))
	testwait.For(t, "the agent's cacert to hold the old and the new CA", cacertHolds(oldCA, nextCA))
	// Step 2: the certificate re-issued from the new CA.
	g.SetMaterial(provision(nextCA, nextCA.CertPEM, oldCA.CertPEM))
	if err := reach(conf); err != nil {
		t.Fatalf("the agent cannot verify the controller at step 2: %v", err)
	}
	var verr *tls.CertificateVerificationError
	if err := reach(offline); !errors.As(err, &verr) {
		t.Fatalf("an agent whose cacert is the old CA alone reached the controller at step 2 (%v), want a verification error", err)
	}
	// Step 3: the old CA dropped.
	g.SetMaterial(provision(nextCA, nextCA.CertPEM))
	testwait.For(t, "the agent's cacert to hold the new CA alone", cacertHolds(nextCA))
	if err := reach(conf); err != nil {
		t.Fatalf("the agent cannot verify the controller after the rotation: %v", err)
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), "tag: machine-7") {
		t.Fatalf("other keys lost:\n%s", data)
	}
}

// lists is an apiaddr.Source over a function.
type lists func() []apiaddr.Controller

func (f lists) Lists(context.Context) (apiwire.Lists, error) { return apiaddr.Compute(f()), nil }
