// Package apihttp is the HTTP face of the API address lists: handlers the
// controller's HTTP API server mounts, and the agent and client sides that
// talk to them.
//
// Routes (JSON bodies are apiaddr.Lists):
//
//	GET /v1/api-addresses                          the current lists, at once
//	GET /v1/api-addresses/watch?version=V&timeout=D the lists once their version
//	                                               differs from V, or the
//	                                               unchanged lists after D
//	                                               (default 30 s, at most 5 min)
//
// Every response wrapped by WithClientAddresses carries the current client
// list in header Dqc-Api-Addresses (comma-separated), so each client
// connection refreshes the client's store.
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

	"github.com/juju/dqlite-controller/workload/apiaddr"
	"github.com/juju/dqlite-controller/workload/apiagent"
	"github.com/juju/dqlite-controller/workload/apiclient"
)

// Routes and header.
const (
	PathAddresses         = "/v1/api-addresses"
	PathWatch             = "/v1/api-addresses/watch"
	HeaderClientAddresses = "Dqc-Api-Addresses"
)

// Watch timeouts.
const (
	DefaultWatchTimeout = 30 * time.Second
	MaxWatchTimeout     = 5 * time.Minute
)

// Lister is the controller's view of the lists (*apiaddr.Watcher).
type Lister interface {
	Current() (apiaddr.Lists, bool)
	Wait(ctx context.Context, version string) (apiaddr.Lists, error)
}

// Register mounts the address routes on mux.
func Register(mux *http.ServeMux, l Lister) {
	mux.HandleFunc("GET "+PathAddresses, func(w http.ResponseWriter, r *http.Request) {
		cur, ok := l.Current()
		if !ok {
			http.Error(w, "API addresses not known yet", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, cur)
	})
	mux.HandleFunc("GET "+PathWatch, func(w http.ResponseWriter, r *http.Request) {
		timeout := DefaultWatchTimeout
		if s := r.URL.Query().Get("timeout"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				http.Error(w, fmt.Sprintf("invalid timeout %q", s), http.StatusBadRequest)
				return
			}
			timeout = min(d, MaxWatchTimeout)
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		cur, err := l.Wait(ctx, r.URL.Query().Get("version"))
		if err != nil && cur.Version == "" {
			http.Error(w, "API addresses not known yet", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, cur) // changed, or unchanged at the timeout
	})
}

// WithClientAddresses makes every response of h carry the current client
// address list.
func WithClientAddresses(h http.Handler, l Lister) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cur, ok := l.Current(); ok && len(cur.Clients) > 0 {
			w.Header().Set(HeaderClientAddresses, strings.Join(cur.Clients, ","))
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func get(ctx context.Context, c *http.Client, u string) (apiaddr.Lists, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return apiaddr.Lists{}, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return apiaddr.Lists{}, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return apiaddr.Lists{}, nil, fmt.Errorf("cannot read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiaddr.Lists{}, nil, fmt.Errorf("%s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	var l apiaddr.Lists
	if err := json.Unmarshal(body, &l); err != nil {
		return apiaddr.Lists{}, nil, fmt.Errorf("cannot parse %s: %w", u, err)
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
	l, addr, err := apiagent.Dial(ctx, addrs, func(ctx context.Context, addr string) (apiaddr.Lists, error) {
		l, _, err := get(ctx, c, baseURL(s.Scheme, addr)+PathAddresses)
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
		timeout = DefaultWatchTimeout
	}
	q := url.Values{"version": {last}, "timeout": {timeout.String()}}
	wctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	l, _, err = get(wctx, c, baseURL(s.Scheme, addr)+PathWatch+"?"+q.Encode())
	if err != nil {
		return nil, "", err
	}
	return l.Agents, l.Version, nil
}

// ClientDial is an apiclient.Func making the client's connection check:
// a GET of the current lists, whose header (or, failing that, body)
// carries the client address list.
func ClientDial(c *http.Client, scheme string) apiclient.Func[apiaddr.Lists] {
	if c == nil {
		c = &http.Client{}
	}
	return func(ctx context.Context, addr string) (apiaddr.Lists, []string, error) {
		l, h, err := get(ctx, c, baseURL(scheme, addr)+PathAddresses)
		if err != nil {
			return l, nil, err
		}
		clients := l.Clients
		if v := h.Get(HeaderClientAddresses); v != "" {
			clients = strings.Split(v, ",")
		}
		return l, clients, nil
	}
}
