// Package apihttp is the consumer side of the controllers' HTTP API: the
// agent's address source and the client's connection check, over the
// routes of package apiwire.
package apihttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
	"github.com/juju/dqlite-controller/workload/consumer/apiclient"
)

func get(ctx context.Context, c *http.Client, u string) (apiwire.Lists, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return apiwire.Lists{}, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return apiwire.Lists{}, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return apiwire.Lists{}, nil, fmt.Errorf("cannot read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiwire.Lists{}, nil, fmt.Errorf("%s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	var l apiwire.Lists
	if err := json.Unmarshal(body, &l); err != nil {
		return apiwire.Lists{}, nil, fmt.Errorf("cannot parse %s: %w", u, err)
	}
	return l, resp.Header, nil
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
	Scheme string
	// WatchTimeout is the long-poll duration asked for (default 30 s).
	WatchTimeout time.Duration
	Dial         apiagent.DialOptions
}

// Watch implements apiagent.Source: the agent list, once its version
// differs from last (the unchanged list when the long poll times out).
func (s *AgentSource) Watch(ctx context.Context, last string) ([]string, string, error) {
	addrs, err := s.Addresses()
	if err != nil {
		return nil, "", err
	}
	if len(addrs) == 0 {
		return nil, "", errors.New("cannot watch API addresses: no known controller address")
	}
	c := s.Client
	if c == nil {
		c = &http.Client{}
	}
	l, addr, err := apiagent.Dial(ctx, addrs, func(ctx context.Context, addr string) (apiwire.Lists, error) {
		l, _, err := get(ctx, c, baseURL(s.Scheme, addr)+apiwire.PathAddresses)
		return l, err
	}, nil, s.Dial)
	if err != nil {
		return nil, "", err
	}
	if l.Version != last {
		return l.Agents, l.Version, nil
	}
	timeout := s.WatchTimeout
	if timeout <= 0 {
		timeout = apiwire.DefaultWatchTimeout
	}
	q := url.Values{"version": {last}, "timeout": {timeout.String()}}
	wctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	l, _, err = get(wctx, c, baseURL(s.Scheme, addr)+apiwire.PathWatch+"?"+q.Encode())
	if err != nil {
		return nil, "", err
	}
	return l.Agents, l.Version, nil
}

// ClientDial is an apiclient.Func making the client's connection check:
// a GET of the current lists, whose header (or, failing that, body)
// carries the client address list.
func ClientDial(c *http.Client, scheme string) apiclient.Func[apiwire.Lists] {
	if c == nil {
		c = &http.Client{}
	}
	return func(ctx context.Context, addr string) (apiwire.Lists, []string, error) {
		l, h, err := get(ctx, c, baseURL(scheme, addr)+apiwire.PathAddresses)
		if err != nil {
			return l, nil, err
		}
		clients := l.Clients
		if v := h.Get(apiwire.HeaderClientAddresses); v != "" {
			clients = strings.Split(v, ",")
		}
		return l, clients, nil
	}
}
