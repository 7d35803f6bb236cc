package control_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// recordingBackend remembers the last statement it was asked to run.
type recordingBackend struct {
	mu   sync.Mutex
	last string
}

func (b *recordingBackend) Status(context.Context) control.Status {
	return control.Status{State: "running"}
}
func (b *recordingBackend) SQL(_ context.Context, s string) (control.SQLResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = s
	n := int64(0)
	return control.SQLResult{RowsAffected: &n}, nil
}

// FuzzServe_Request writes any bytes on a connection to the control
// socket: the daemon must answer (or close the connection) within its
// timeouts, keep serving, and run a POST /sql statement only as the JSON
// body says.
func FuzzServe_Request(f *testing.F) {
	for _, s := range []string{
		"GET /status HTTP/1.1\r\nHost: controllerd\r\n\r\n",
		"POST /sql HTTP/1.1\r\nHost: controllerd\r\nContent-Length: 26\r\n\r\n{\"statement\":\"SELECT 1\"}\r\n",
		"POST /sql HTTP/1.1\r\nHost: controllerd\r\nContent-Length: 5\r\n\r\n[1,2]",
		"POST /sql HTTP/1.1\r\nHost: controllerd\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"sta\r\n0\r\n\r\n",
		"POST /sql HTTP/1.1\r\nHost: controllerd\r\nContent-Length: 99999999\r\n\r\n{",
		"DELETE /sql HTTP/1.1\r\nHost: controllerd\r\n\r\n",
		"GET /../status HTTP/1.0\r\n\r\n",
		"\x00\x01\x02",
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	b := &recordingBackend{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := control.Serve(ctx, dir, b, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := net.Dial("unix", control.SocketPath(dir))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b.mu.Lock()
		b.last = "\x00unset"
		b.mu.Unlock()
		c.Write(raw)
		if uc, ok := c.(*net.UnixConn); ok {
			uc.CloseWrite()
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && !json.Valid(body) {
				t.Fatalf("200 with invalid JSON %q", body)
			}
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("no answer and no close within 10s for %q", raw)
		}
		// A statement ran only if the request was a POST /sql whose body
		// decodes to it.
		b.mu.Lock()
		ran := b.last
		b.mu.Unlock()
		if ran != "\x00unset" {
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
			if err != nil || req.Method != http.MethodPost || req.URL.Path != "/sql" {
				t.Fatalf("ran %q for a request that is not POST /sql: %q", ran, raw)
			}
			var body control.SQLRequest
			if err := json.NewDecoder(req.Body).Decode(&body); err != nil || body.Statement != ran {
				t.Fatalf("ran %q, the body decodes to %q (%v)", ran, body.Statement, err)
			}
		}
		// Still serving.
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if _, err := control.NewClient(dir).Status(sctx); err != nil {
			t.Fatalf("the control socket stopped serving after %q: %v", raw, err)
		}
	})
}
