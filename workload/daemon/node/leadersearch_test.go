package node

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
)

// blackHole accepts TCP connections in the kernel (the listen backlog)
// and never answers: a paused node, as a leader search sees it.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// Five paused nodes listed ahead of the leader: go-dqlite's own search
// (one node after the other, each for an attempt) needs at least five
// attempts before it reaches the leader; the daemon's asks every node at
// once and finds the leader within one attempt, so well inside a
// deadline of 2.5 attempts. A node that only names the leader is followed
// to it.
func TestFindLeader_PausedNodesAheadDoNotHideTheLeader(t *testing.T) {
	addr := freeLoopbackAddress(t)
	a, err := app.New(t.TempDir(), app.WithAddress(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	d, _ := newFakeDaemon(t, conf("0", "10.9.0.1"), false)

	var nodes []client.NodeInfo
	for i := 0; i < 5; i++ {
		nodes = append(nodes, client.NodeInfo{Address: blackHole(t)})
	}
	nodes = append(nodes, client.NodeInfo{Address: addr})
	store := client.NewInmemNodeStore()
	store.Set(ctx, nodes)

	deadline := 5 * leaderSearchAttempt / 2
	sctx, scancel := context.WithTimeout(ctx, deadline)
	defer scancel()
	cli, err := d.findLeader(sctx, store)
	if err != nil {
		t.Fatalf("leader not found within %s behind 5 paused nodes: %v", deadline, err)
	}
	info, err := cli.Leader(ctx)
	cli.Close()
	if err != nil || info.Address != addr {
		t.Fatalf("client connected to %+v (%v), want the leader %s", info, err, addr)
	}

	// Nobody leads among the listed: the search says who answered what.
	only := client.NewInmemNodeStore()
	only.Set(ctx, nodes[:2])
	if _, err := d.findLeader(ctx, only); err == nil {
		t.Fatal("found a leader among paused nodes only")
	} else {
		t.Logf("paused nodes only: %v", err)
	}
}

func freeLoopbackAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
