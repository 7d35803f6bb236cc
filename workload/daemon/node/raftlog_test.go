package node

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
)

// writeRows starts a one-node cluster in dir (bootstrapping it the first
// time), commits n transactions and closes it.
func writeRows(t *testing.T, dir, addr string, n int) {
	t.Helper()
	a, err := app.New(dir, app.WithAddress(addr), app.WithNetworkLatency(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	db, err := a.Open(ctx, "controller")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS r (id INTEGER PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := db.ExecContext(ctx, "INSERT INTO r (id) VALUES (NULL)"); err != nil {
			t.Fatal(err)
		}
	}
}

// The position read from a real libraft data dir moves forward by at least
// one entry per committed transaction, across restarts (each restart
// elects the node again in a higher term and closes the open segment).
func TestRaftPosition_ReadFromRealNodeDirs(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if p, err := readRaftPosition(dir); err != nil || p != (RaftPosition{}) {
		t.Fatalf("empty dir: %v, %v", p, err)
	}
	var prev RaftPosition
	for round := 1; round <= 3; round++ {
		writeRows(t, dir, addr, 20)
		p, err := readRaftPosition(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %s", round, p)
		if p.Index < prev.Index+20 || p.Term < prev.Term || !p.Newer(prev) {
			t.Fatalf("round %d: position %s after 20 commits, was %s", round, p, prev)
		}
		prev = p
	}
	if (RaftPosition{Term: 2, Index: 1}).Newer(RaftPosition{Term: 1, Index: 100}) == false {
		t.Fatal("a higher term must win over a higher index")
	}
	_ = fmt.Sprint
}
