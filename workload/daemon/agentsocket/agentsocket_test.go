package agentsocket_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/agentsocket"
)

// The two routes as Juju 4's controller agent serves them, the socket's
// mode, a stale socket file replaced, a live one never taken over, and the
// socket gone after shutdown.
func TestServe_ReloadAgentIDModeAndOwnership(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, agentsocket.Name)
	if err := os.WriteFile(path, nil, 0o644); err != nil { // a stale file
		t.Fatal(err)
	}
	var reloads atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done, err := agentsocket.Serve(ctx, path, "7", func() { reloads.Add(1) }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket %v mode %v, want a socket with mode 0700", err, st.Mode())
	}
	c := agentsocket.NewClient(path)
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if id, err := c.AgentID(rctx); err != nil || id != "7" {
		t.Fatalf("agent id %q, %v", id, err)
	}
	if err := c.Reload(rctx); err != nil || reloads.Load() != 1 {
		t.Fatalf("reload: %v, reloads %d", err, reloads.Load())
	}
	// Wrong methods are refused.
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://configchange/reload", nil)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (conn net.Conn, err error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /reload: %v %v", resp, err)
	}
	// A second server must not steal a live socket.
	if _, err := agentsocket.Serve(ctx, path, "8", func() {}, slog.New(slog.DiscardHandler)); !errors.Is(err, agentsocket.ErrInUse) {
		t.Fatalf("second Serve: %v, want ErrInUse", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket left behind after shutdown")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
