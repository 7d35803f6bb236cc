// Package dqlitetest starts real single-node Dqlite clusters for tests: a
// go-dqlite app bound to 127.0.0.1 on a free port with its data in a test
// temporary directory.
package dqlitetest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
)

// Patience bounds every setup call: generous, because the machine running
// the tests may be loaded; it is a deadline, never an assertion on speed.
const Patience = 30 * time.Second

// Node is a running single-node cluster.
type Node struct {
	App *app.App
	DB  *sql.DB
}

// Start starts a fresh one-node cluster and opens database "controller"
// on it. Both are closed when the test ends.
func Start(t testing.TB) *Node {
	t.Helper()
	addr := freeAddress(t)
	a, err := app.New(t.TempDir(), app.WithAddress(addr), app.WithNetworkLatency(20*time.Millisecond))
	if err != nil {
		t.Fatalf("cannot start dqlite node on %s: %v", addr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	if err := a.Ready(ctx); err != nil {
		a.Close()
		t.Fatalf("dqlite node on %s not ready: %v", addr, err)
	}
	db, err := a.Open(ctx, "controller")
	if err != nil {
		a.Close()
		t.Fatalf("cannot open database: %v", err)
	}
	n := &Node{App: a, DB: db}
	t.Cleanup(func() {
		db.Close()
		a.Close()
	})
	return n
}

// OpenDB opens another database/sql handle on the node's "controller"
// database, as a second controller process would have; the test may close
// it to cut that "controller" off from the database.
func (n *Node) OpenDB(t testing.TB) *sql.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	db, err := n.App.Open(ctx, "controller")
	if err != nil {
		t.Fatalf("cannot open database: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func freeAddress(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("cannot find a free port: %v", err)
	}
	defer l.Close()
	return fmt.Sprintf("127.0.0.1:%d", l.Addr().(*net.TCPAddr).Port)
}
