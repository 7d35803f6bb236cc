package node

import "testing"

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
