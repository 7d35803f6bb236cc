package apiserver_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
)

// fuzzLister serves fixed lists; Wait returns them at once when the
// version differs, else at the caller's deadline.
type fuzzLister struct{ l apiwire.Lists }

func (f fuzzLister) Current() (apiwire.Lists, bool) { return f.l, true }
func (f fuzzLister) Wait(ctx context.Context, version string) (apiwire.Lists, error) {
	if version != f.l.Version {
		return f.l, nil
	}
	<-ctx.Done()
	return f.l, ctx.Err()
}

// FuzzHandler_Request sends any HTTP request (method, path, query,
// headers, body, as raw bytes) to every route of the API: the handler
// must answer with a known status within the request's deadline, valid
// JSON for a JSON answer, and the client address header.
func FuzzHandler_Request(f *testing.F) {
	for _, s := range []string{
		"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/lease HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/api-addresses HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/api-addresses/watch?version=v1&timeout=1h HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/api-addresses/watch?version=&timeout=-1s HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/api-addresses/watch?timeout=9999999999999999999h HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{}}",
		"GET /v1/../v1/health?%zz HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET //v1//api-addresses HTTP/1.1\r\nHost: x\r\nDqc-Api-Addresses: 1.2.3.4:1\r\n\r\n",
		"HEAD /v1/api-addresses/watch?version=v1&version=v2 HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte("GET /v1/api-addresses HTTP/1.1\r\nHost: x\r\n\r\n"), false)
	lists := apiwire.Lists{Agents: []string{"10.0.0.1:17070"}, Clients: []string{"10.0.0.1:17070", "192.168.0.1:17070"}, Version: "v1"}
	f.Fuzz(func(t *testing.T, raw []byte, member bool) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // not a request the server would read either
		}
		b := newBackend(member)
		b.health = apiserver.Health{ControllerID: "0", State: "running", Member: member}
		h := apiserver.Handler(b, fuzzLister{l: lists})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req = req.WithContext(ctx)
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() { defer close(done); h.ServeHTTP(rec, req) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer within 5s to %q", raw)
		}
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed,
			http.StatusServiceUnavailable, http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			t.Fatalf("status %d for %q", rec.Code, raw)
		}
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && req.Method != http.MethodHead && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("invalid JSON %q for %q", rec.Body.Bytes(), raw)
		}
		if got := rec.Header().Get(apiwire.HeaderClientAddresses); got != strings.Join(lists.Clients, ",") {
			t.Fatalf("client address header %q for %q", got, raw)
		}
	})
}
