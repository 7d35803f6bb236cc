// Package apihttp is the consumer side of the controllers' HTTP API: the
// agent's address source and the client's connection check, over the
// routes of package apiwire.
package apihttp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
	"github.com/juju/dqlite-controller/workload/consumer/apiclient"
)

// answer is a response of the API: its lists, header, and the CA that
// verified the server's certificate on the connection (nil when the
// connection was not verified: plain HTTP, or a client that skips
// verification).
type answer struct {
	lists      apiwire.Lists
	header     http.Header
	verifiedBy *x509.Certificate
}

func get(ctx context.Context, c *http.Client, u string) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return answer{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return answer{}, fmt.Errorf("cannot read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return answer{}, fmt.Errorf("%s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	a := answer{header: resp.Header, verifiedBy: verifiedBy(resp.TLS)}
	if err := json.Unmarshal(body, &a.lists); err != nil {
		return answer{}, fmt.Errorf("cannot parse %s: %w", u, err)
	}
	return a, nil
}

// verifiedBy is the root of the connection's first verified chain: the
// CA of the client's pool that verified the server (nil when the
// standard verification did not run).
func verifiedBy(cs *tls.ConnectionState) *x509.Certificate {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	chain := cs.VerifiedChains[0]
	return chain[len(chain)-1]
}

// update is the agent's view of an answer: the CA bundle only with the CA
// that verified the connection carrying it.
func (a answer) update() apiagent.Update {
	up := apiagent.Update{Addresses: a.lists.Agents, Version: a.lists.Version}
	if a.lists.CABundle != "" && a.verifiedBy != nil {
		up.CACert, up.VerifiedBy = []byte(a.lists.CABundle), a.verifiedBy
	}
	return up
}

func baseURL(scheme, addr string) string {
	if scheme == "" {
		scheme = "http"
	}
	return (&url.URL{Scheme: scheme, Host: addr}).String()
}

// AgentSource is the agent's apiagent.Source over HTTP: it connects to one
// of the agent's known addresses (random order, staggered; the race is run
// on the quick current-list request), and long-polls that controller.
type AgentSource struct {
	// Addresses returns where the controllers are, typically
	// apiagent.ReadAddresses of the agent config file.
	Addresses func() ([]string, error)
	// Client defaults to a client without overall timeout (the requests
	// carry contexts).
	Client *http.Client
	// CurrentClient, when set, returns the client of each watch instead
	// of Client: the agent's, verifying against the agent config's
	// current cacert, so that a CA bundle the updater has just written is
	// trusted from the next watch on.
	CurrentClient func() (*http.Client, error)
	Scheme        string
	// WatchTimeout is the long-poll duration asked for (default 30 s).
	WatchTimeout time.Duration
	Dial         apiagent.DialOptions
}

// Watch implements apiagent.Source: the agent list and the CA bundle,
// once their version differs from last (the unchanged ones when the long
// poll times out). The bundle is passed on only from a verified
// connection (apiagent.Update).
func (s *AgentSource) Watch(ctx context.Context, last string) (apiagent.Update, error) {
	addrs, err := s.Addresses()
	if err != nil {
		return apiagent.Update{}, err
	}
	if len(addrs) == 0 {
		return apiagent.Update{}, errors.New("cannot watch API addresses: no known controller address")
	}
	c := s.Client
	if s.CurrentClient != nil {
		if c, err = s.CurrentClient(); err != nil {
			return apiagent.Update{}, err
		}
	}
	if c == nil {
		c = &http.Client{}
	}
	// Each watch starts on fresh connections: the CA that verified a
	// connection is the one of the certificate the controller presented
	// when it was made, and a bundle is checked against it
	// (apiagent.CheckCABundle), so a connection kept from before a
	// rotation step must not carry the next watch.
	defer c.CloseIdleConnections()
	a, addr, err := apiagent.Dial(ctx, addrs, func(ctx context.Context, addr string) (answer, error) {
		return get(ctx, c, baseURL(s.Scheme, addr)+apiwire.PathAddresses)
	}, nil, s.Dial)
	if err != nil {
		return apiagent.Update{}, err
	}
	if a.lists.Version != last {
		return a.update(), nil
	}
	timeout := s.WatchTimeout
	if timeout <= 0 {
		timeout = apiwire.DefaultWatchTimeout
	}
	q := url.Values{"version": {last}, "timeout": {timeout.String()}}
	wctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	a, err = get(wctx, c, baseURL(s.Scheme, addr)+apiwire.PathWatch+"?"+q.Encode())
	if err != nil {
		return apiagent.Update{}, err
	}
	return a.update(), nil
}

// ClientDial is an apiclient.Func making the client's connection check:
// a GET of the current lists, whose header (or, failing that, body)
// carries the client address list.
func ClientDial(c *http.Client, scheme string) apiclient.Func[apiwire.Lists] {
	if c == nil {
		c = &http.Client{}
	}
	return func(ctx context.Context, addr string) (apiwire.Lists, []string, error) {
		a, err := get(ctx, c, baseURL(scheme, addr)+apiwire.PathAddresses)
		if err != nil {
			return a.lists, nil, err
		}
		clients := a.lists.Clients
		if v := a.header.Get(apiwire.HeaderClientAddresses); v != "" {
			clients = strings.Split(v, ",")
		}
		return a.lists, clients, nil
	}
}

// AgentClients returns an AgentSource.CurrentClient for the agent config
// file at path: the client build makes for the file's current cacert,
// made again only when cacert changes (the idle connections of the
// previous one are closed), so that the agent verifies the controllers
// against the CA bundle it last learnt.
func AgentClients(path string, build func(caPEM []byte) (*http.Client, error)) func() (*http.Client, error) {
	var (
		mu      sync.Mutex
		lastPEM []byte
		last    *http.Client
	)
	return func() (*http.Client, error) {
		caPEM, err := apiagent.ReadCACert(path)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if last != nil && bytes.Equal(caPEM, lastPEM) {
			return last, nil
		}
		c, err := build(caPEM)
		if err != nil {
			return nil, fmt.Errorf("cannot use the %s of %s: %w", apiagent.CACertKey, path, err)
		}
		if last != nil {
			last.CloseIdleConnections()
		}
		last, lastPEM = c, caPEM
		return c, nil
	}
}
