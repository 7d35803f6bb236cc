package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
)

// Lister is the address lists (*apiaddr.Watcher).
type Lister interface {
	Current() (apiwire.Lists, bool)
	Wait(ctx context.Context, version string) (apiwire.Lists, error)
}

// RegisterAddresses mounts the address routes on mux, with long polls
// bounded by the default limits.
func RegisterAddresses(mux *http.ServeMux, l Lister) {
	registerAddresses(mux, l, newLongPolls(DefaultLimits()))
}

func registerAddresses(mux *http.ServeMux, l Lister, polls *longPolls) {
	mux.HandleFunc("GET "+apiwire.PathAddresses, func(w http.ResponseWriter, r *http.Request) {
		cur, ok := l.Current()
		if !ok {
			http.Error(w, "API addresses not known yet", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, http.StatusOK, cur)
	})
	mux.HandleFunc("GET "+apiwire.PathWatch, polls.wrap(func(w http.ResponseWriter, r *http.Request) {
		timeout := apiwire.DefaultWatchTimeout
		if s := r.URL.Query().Get("timeout"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				http.Error(w, fmt.Sprintf("invalid timeout %q", s), http.StatusBadRequest)
				return
			}
			timeout = min(d, apiwire.MaxWatchTimeout)
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		cur, err := l.Wait(ctx, r.URL.Query().Get("version"))
		if err != nil && cur.Version == "" {
			http.Error(w, "API addresses not known yet", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, http.StatusOK, cur) // changed, or unchanged at the timeout
	}))
}

// WithClientAddresses makes every response of h carry the current client
// address list.
func WithClientAddresses(h http.Handler, l Lister) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cur, ok := l.Current(); ok && len(cur.Clients) > 0 {
			w.Header().Set(apiwire.HeaderClientAddresses, strings.Join(cur.Clients, ","))
		}
		h.ServeHTTP(w, r)
	})
}
