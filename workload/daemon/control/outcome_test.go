package control_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

type backend struct{ err error }

func (b backend) Status(context.Context) control.Status { return control.Status{State: "running"} }
func (b backend) SQL(context.Context, string) (control.SQLResult, error) {
	n := int64(1)
	return control.SQLResult{RowsAffected: &n}, b.err
}

func serve(t *testing.T, b control.Backend) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done, err := control.Serve(ctx, dir, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return dir
}

// fakeDaemon listens on the control socket of a new data dir and hands
// each connection to handle (a daemon that dies or hangs mid-request).
func fakeDaemon(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("unix", control.SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return dir
}

// readRequest reads until the end of the request's JSON body.
func readRequest(c net.Conn) {
	buf := make([]byte, 4096)
	var got []byte
	for !strings.HasSuffix(strings.TrimSpace(string(got)), "}") {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		got = append(got, buf[:n]...)
	}
}

// Only a connection that was never made is a plain failure; once the
// request was sent, a lost answer (the daemon closed the connection, a
// reset, the deadline) leaves the outcome unknown, and so does the
// daemon's own answer that its COMMIT's outcome is unknown.
func TestClientSQL_OutcomeUnknownOnlyAfterTheRequestWasSent(t *testing.T) {
	stale := t.TempDir()
	if l, err := net.Listen("unix", control.SocketPath(stale)); err == nil {
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close() // the socket file stays, nobody listens: ECONNREFUSED
	}
	nodeCommitErr := fmt.Errorf("cannot commit: %w: %w", control.ErrOutcomeUnknown, errors.New("driver: bad connection"))
	tests := []struct {
		summary    string
		dataDir    string
		timeout    time.Duration
		unknown    bool
		notRunning bool
	}{
		{summary: "no socket file", dataDir: t.TempDir(), notRunning: true},
		{summary: "stale socket file, nobody listens", dataDir: stale, notRunning: true},
		{summary: "daemon closes the connection after reading the request (EOF)", dataDir: fakeDaemon(t, func(c net.Conn) { readRequest(c); c.Close() }), unknown: true},
		{summary: "daemon resets the connection after reading the request", dataDir: fakeDaemon(t, func(c net.Conn) {
			readRequest(c)
			c.(*net.UnixConn).CloseRead()
			c.Close()
		}), unknown: true},
		{summary: "daemon dies half-way through its answer", dataDir: fakeDaemon(t, func(c net.Conn) {
			readRequest(c)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"rows-af")
			c.Close()
		}), unknown: true},
		{summary: "daemon never answers, client deadline after sending", dataDir: fakeDaemon(t, func(c net.Conn) { readRequest(c); time.Sleep(time.Minute) }), timeout: 300 * time.Millisecond, unknown: true},
		{summary: "daemon's COMMIT answer lost (node wraps ErrOutcomeUnknown)", dataDir: serve(t, backend{err: nodeCommitErr}), unknown: true},
		{summary: "daemon's COMMIT answer lost (wrapped)", dataDir: serve(t, backend{err: fmt.Errorf("cannot commit: %w: EOF", control.ErrOutcomeUnknown)}), unknown: true},
		{summary: "database refuses the statement", dataDir: serve(t, backend{err: errors.New("no such table: t")})},
	}
	for _, tt := range tests {
		timeout := tt.timeout
		if timeout == 0 {
			timeout = 30 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := control.NewClient(tt.dataDir).SQL(ctx, "INSERT INTO t VALUES (1)")
		cancel()
		if err == nil {
			t.Errorf("%s: no error", tt.summary)
			continue
		}
		if got := errors.Is(err, control.ErrOutcomeUnknown); got != tt.unknown {
			t.Errorf("%s: unknown outcome %v, want %v (%v)", tt.summary, got, tt.unknown, err)
		}
		if got := errors.Is(err, control.ErrNotRunning); got != tt.notRunning {
			t.Errorf("%s: not running %v, want %v (%v)", tt.summary, got, tt.notRunning, err)
		}
	}

	// A read's lost answer changes nothing: a plain error.
	dir := fakeDaemon(t, func(c net.Conn) { c.Read(make([]byte, 4096)); c.Close() })
	if _, err := control.NewClient(dir).Status(context.Background()); err == nil || errors.Is(err, control.ErrOutcomeUnknown) {
		t.Errorf("status with its answer lost: %v; want a plain error", err)
	}
	if _, err := os.Stat(filepath.Join(dir, control.SocketName)); err != nil {
		t.Fatal(err)
	}
}
