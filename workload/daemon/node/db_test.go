package node

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

func TestIsQuery(t *testing.T) {
	tests := []struct {
		stmt  string
		query bool
	}{
		{"SELECT 1", true},
		{"  select * from t", true},
		{"WITH x AS (SELECT 1) SELECT * FROM x", true},
		{"PRAGMA table_info(t)", true},
		{"EXPLAIN QUERY PLAN SELECT 1", true},
		{"VALUES (1), (2)", true},
		{"(SELECT 1)", true},
		{"-- comment\nSELECT 1", true},
		{"INSERT INTO t VALUES (1)", false},
		{"UPDATE t SET x = 1", false},
		{"DELETE FROM t", false},
		{"CREATE TABLE t (x)", false},
		{"-- only a comment", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := isQuery(tt.stmt); got != tt.query {
			t.Errorf("isQuery(%q) = %v, want %v", tt.stmt, got, tt.query)
		}
	}
}

// A statement whose database the node closed under it (controllerd
// stopping on SIGTERM) was not applied: it is refused as "not available",
// as when the node had no database at all, not passed on as database/sql's
// "sql: database is closed".
func TestSQL_DatabaseClosedUnderTheStatementIsARefusal(t *testing.T) {
	db, err := sql.Open("sqlite3", ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	d := &Daemon{}
	d.status.State = string(StateStopping)
	_, err = d.sqlOn(context.Background(), db, "INSERT INTO t VALUES (1)")
	if err == nil {
		t.Fatal("statement on a closed database succeeded")
	}
	for _, want := range []string{"the controller database is not available", "not applied", string(StateStopping)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if errors.Is(err, control.ErrOutcomeUnknown) {
		t.Errorf("error %q reported as of unknown outcome", err)
	}
}
