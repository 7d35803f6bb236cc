package main_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/agentsocket"
)

// controllerd serves Juju 4's configchange.socket when asked to: GET
// /agent-id answers its controller id, POST /reload answers 204 and makes
// the daemon read its config again; the socket is mode 0700 and goes away
// when the daemon stops.
func TestConfigChangeSocket_AgentIDAndReload(t *testing.T) {
	c := newCluster(t)
	sock := filepath.Join(c.dir, agentsocket.Name)
	c.args = []string{"--config-change-socket", sock}
	c.form(1)
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket: %v, mode %v; want 0700", err, st.Mode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := agentsocket.NewClient(sock)
	if id, err := cl.AgentID(ctx); err != nil || id != "0" {
		t.Fatalf("GET /agent-id = %q, %v", id, err)
	}
	before := time.Now()
	if err := cl.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the reload in the log", func() (bool, string) {
		_, ok := c.node("0").lineAfter(before.Add(-time.Second), "reload config request received")
		return ok, ""
	})
	if err := c.stop("0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after the daemon stopped: %v", err)
	}
}
