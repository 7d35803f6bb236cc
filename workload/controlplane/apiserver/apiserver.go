// Package apiserver is controllerd's HTTP API, over TLS with a certificate
// of the cluster CA (package clustertls):
//
//	GET /v1/health                                 node state, member, role (200 while a
//	                                               running member, 503 otherwise)
//	GET /v1/api-addresses                          the address lists and the CA bundle the
//	                                               node trusts (package apiwire)
//	GET /v1/api-addresses/watch?version=&timeout=  long poll of the lists
//	GET /v1/lease                                  the singular-controller lease as this
//	                                               node's singular worker last saw it
//
// Every response carries the current client address list in header
// Dqc-Api-Addresses (the last known one while the node cannot read the
// database). The address routes answer 503 while the node is not a member
// of the cluster, so that an agent moves on to a controller that is; the
// health route answers always.
//
// No route costs a database transaction: health, the address lists and
// the lease are answered from views that the node's workers keep (the
// address watcher's lists, the singular worker's last claim), so a flood
// of requests cannot take Dqlite away from the lease. Connections and
// long polls are bounded (Limits).
package apiserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
)

// Routes.
const (
	PathHealth = "/v1/health"
	PathLease  = "/v1/lease"
)

// Server timeouts. WriteTimeout must outlast the longest long poll.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = apiwire.MaxWatchTimeout + 30*time.Second
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 64 << 10
	// RetryListen is the wait before trying to listen again when the
	// port is taken.
	RetryListen = 5 * time.Second
	// ShutdownTimeout bounds the graceful part of the shutdown; long
	// polls still open after it are closed.
	ShutdownTimeout = 2 * time.Second
)

// Health is the body of GET /v1/health.
type Health struct {
	ControllerID string `json:"controller-id"`
	State        string `json:"state"`
	Member       bool   `json:"member"`
	Role         string `json:"role"`
	Message      string `json:"message"`
	// Leader is the Dqlite leader's address, "" when unknown.
	Leader string `json:"leader"`
	// LeaseHolder is the singular-controller holder as this node last saw it.
	LeaseHolder string `json:"lease-holder"`
}

// Healthy reports whether the node is a running member.
func (h Health) Healthy() bool { return h.Member && h.State == "running" }

// Lease is the body of GET /v1/lease: the lease row as the singular
// worker's last answered claim returned it. Holder is "" and the times are
// null when there is no lease row; Expired and RemainingMS are the
// database's remaining validity at that claim minus the local time since
// (AgeMS), so they stay current between claims.
type Lease struct {
	Namespace   string     `json:"namespace"`
	Name        string     `json:"name"`
	Holder      string     `json:"holder"`
	Start       *time.Time `json:"start"`
	Expiry      *time.Time `json:"expiry"`
	Expired     bool       `json:"expired"`
	RemainingMS int64      `json:"remaining-ms"`
	Tenure      int64      `json:"tenure"`
	AgeMS       int64      `json:"age-ms"`
}

// Backend is what the server asks the daemon. Every method answers from
// memory: none may start a database transaction.
type Backend interface {
	Health(ctx context.Context) Health
	// Lease is the singular worker's view of the lease; an error when
	// the node has none (its singular worker is not running).
	Lease() (Lease, error)
	// Member reports whether the node is a member of the cluster now and
	// returns a channel closed at the next change.
	Member() (member bool, changed <-chan struct{})
	// CABundle is the PEM bundle of the CAs the node trusts now (its
	// loaded TLS material; nil without TLS), published with the address
	// lists so that agents keep their cacert: current through a CA
	// rotation.
	CABundle() []byte
}

// ErrNotMember is returned by the gated lister while the node is not a
// member.
var ErrNotMember = errors.New("this controller is not a member of the cluster")

// Handler returns the API's handler with the default limits.
func Handler(b Backend, l Lister) http.Handler { return NewHandler(b, l, DefaultLimits()) }

// NewHandler returns the API's handler; long polls are bounded by
// lim.MaxLongPolls.
func NewHandler(b Backend, l Lister, lim Limits) http.Handler {
	lim = lim.withDefaults()
	mux := http.NewServeMux()
	addrs := http.NewServeMux()
	registerAddresses(addrs, gated{b: b, l: withCABundle{l: l, bundle: b.CABundle}}, newLongPolls(lim))
	memberOnly := func(w http.ResponseWriter, r *http.Request) {
		if m, _ := b.Member(); !m {
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: ErrNotMember.Error() + "; ask another controller"})
			return
		}
		addrs.ServeHTTP(w, r)
	}
	mux.HandleFunc("GET "+apiwire.PathAddresses, memberOnly)
	mux.HandleFunc("GET "+apiwire.PathWatch, memberOnly)
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) {
		h := b.Health(r.Context())
		code := http.StatusOK
		if !h.Healthy() {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, h)
	})
	mux.HandleFunc("GET "+PathLease, func(w http.ResponseWriter, r *http.Request) {
		l, err := b.Lease()
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, l)
	})
	return WithClientAddresses(mux, l)
}

// gated serves the lists only while the node is a member; a long poll
// returns (503) when the node stops being one.
type gated struct {
	b Backend
	l Lister
}

func (g gated) Current() (apiwire.Lists, bool) {
	if m, _ := g.b.Member(); !m {
		return apiwire.Lists{}, false
	}
	return g.l.Current()
}

func (g gated) Wait(ctx context.Context, version string) (apiwire.Lists, error) {
	for {
		m, changed := g.b.Member()
		if !m {
			return apiwire.Lists{}, ErrNotMember
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-changed:
				cancel()
			case <-wctx.Done():
			}
		}()
		cur, err := g.l.Wait(wctx, version)
		cancel()
		if err == nil || ctx.Err() != nil {
			return cur, err
		}
		// Membership changed: check it again.
	}
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Serve serves h on addr with the default limits until ctx is done (see
// Server.Serve). With tlsConfig (controllerd always gives one) every
// connection is TLS; nil serves plain HTTP, for tests only.
func Serve(ctx context.Context, addr string, h http.Handler, tlsConfig *tls.Config, log *slog.Logger, setErr func(string)) error {
	s := &Server{Addr: addr, Handler: h, Limits: DefaultLimits(), TLS: tlsConfig, Log: log, SetErr: setErr}
	return s.Serve(ctx)
}

// Server is the HTTP API's server.
type Server struct {
	Addr    string
	Handler http.Handler
	// Limits bound the connections (the long polls are bounded by the
	// handler: NewHandler).
	Limits Limits
	// TLS, when set, makes every connection TLS (package clustertls).
	TLS *tls.Config
	Log *slog.Logger
	// SetErr reports why the API does not listen, "" once it does.
	SetErr func(string)
}

// listen makes the API's listener: TCP on Addr, connections bounded by
// Limits. This is the one place the listener is set up (TLS wraps the
// limited listener here; a refused connection must then be closed without
// a plaintext answer).
func (s *Server) listen(ctx context.Context) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", s.Addr)
	if err != nil {
		return nil, err
	}
	lim := s.Limits.withDefaults()
	if s.TLS != nil {
		// A refused connection is closed before its handshake: a
		// plaintext 503 would mean nothing to a TLS client.
		return tls.NewListener(newLimitListener(l, lim, func(c net.Conn) { c.Close() }), s.TLS), nil
	}
	return newLimitListener(l, lim, lim.refusePlain), nil
}

// Serve serves until ctx is done. When Addr cannot be listened on (e.g.
// the port is taken) it reports the error through SetErr and tries again
// every RetryListen, so the Dqlite node is never held hostage by its API
// port.
func (s *Server) Serve(ctx context.Context) error {
	log, addr := s.Log, s.Addr
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	setErr := s.SetErr
	if setErr == nil {
		setErr = func(string) {}
	}
	var l net.Listener
	for {
		var err error
		l, err = s.listen(ctx)
		if err == nil {
			break
		}
		msg := fmt.Sprintf("cannot listen on %s for the HTTP API: %v", addr, err)
		log.Error("cannot serve the HTTP API; retrying", "address", addr, "err", err, "retry", RetryListen)
		setErr(msg)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(RetryListen):
		}
	}
	setErr("")
	scheme := "plain HTTP"
	if s.TLS != nil {
		scheme = "HTTPS"
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	log.Info("serving the HTTP API", "address", l.Addr().String(), "scheme", scheme)
	select {
	case err := <-done:
		return fmt.Errorf("cannot serve the HTTP API: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done
	return nil
}
