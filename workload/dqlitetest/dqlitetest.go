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
	App    *app.App
	DB     *sql.DB
	closed bool
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
	t.Cleanup(n.Close)
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

// StartCluster starts an n-node cluster on loopback (the first node
// bootstraps, the others join it) and waits until every node is Ready and
// the cluster has min(n, 3) voters. Each node has database "controller"
// open. Nodes are closed when the test ends (Close is idempotent here).
func StartCluster(t testing.TB, n int) []*Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	var nodes []*Node
	var first string
	for i := 0; i < n; i++ {
		addr := freeAddress(t)
		opts := []app.Option{app.WithAddress(addr), app.WithNetworkLatency(20 * time.Millisecond),
			app.WithRolesAdjustmentFrequency(time.Second)}
		if i == 0 {
			first = addr
		} else {
			opts = append(opts, app.WithCluster([]string{first}))
		}
		a, err := app.New(t.TempDir(), opts...)
		if err != nil {
			t.Fatalf("cannot start dqlite node %d on %s: %v", i, addr, err)
		}
		node := &Node{App: a}
		t.Cleanup(node.Close)
		nodes = append(nodes, node)
	}
	for i, node := range nodes {
		if err := node.App.Ready(ctx); err != nil {
			t.Fatalf("dqlite node %d not ready: %v", i, err)
		}
		db, err := node.App.Open(ctx, "controller")
		if err != nil {
			t.Fatalf("cannot open database on node %d: %v", i, err)
		}
		node.DB = db
	}
	want := min(n, 3)
	for {
		if voters(ctx, nodes[0]) >= want {
			return nodes
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cluster never reached %d voters", want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func voters(ctx context.Context, n *Node) int {
	c, err := n.App.Leader(ctx)
	if err != nil {
		return 0
	}
	defer c.Close()
	members, err := c.Cluster(ctx)
	if err != nil {
		return 0
	}
	v := 0
	for _, m := range members {
		if m.Role == 0 { // client.Voter
			v++
		}
	}
	return v
}

// Close stops the node (as a crash would, without a hand-over); calling it
// again does nothing.
func (n *Node) Close() {
	if n.closed {
		return
	}
	n.closed = true
	if n.DB != nil {
		n.DB.Close()
	}
	n.App.Close()
}

// LeaderAddress returns the current Dqlite leader's address as seen from n.
func (n *Node) LeaderAddress(ctx context.Context) (string, error) {
	c, err := n.App.Leader(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	info, err := c.Leader(ctx)
	if err != nil {
		return "", err
	}
	return info.Address, nil
}
