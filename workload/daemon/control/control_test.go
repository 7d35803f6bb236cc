package control_test

import (
	"encoding/json"
	"testing"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

func TestSQLResultJSONShapes(t *testing.T) {
	n := int64(3)
	tests := []struct {
		summary string
		res     control.SQLResult
		want    string
	}{
		{"query with rows", control.SQLResult{IsQuery: true, Columns: []string{"a"}, Rows: [][]any{{1}}}, `{"columns":["a"],"rows":[[1]]}`},
		{"query without rows", control.SQLResult{IsQuery: true, Columns: []string{"a"}}, `{"columns":["a"],"rows":[]}`},
		{"statement", control.SQLResult{RowsAffected: &n}, `{"rows-affected":3}`},
	}
	for _, tt := range tests {
		data, err := json.Marshal(tt.res)
		if err != nil || string(data) != tt.want {
			t.Errorf("%s: %s, %v; want %s", tt.summary, data, err, tt.want)
		}
		var back control.SQLResult
		if err := json.Unmarshal(data, &back); err != nil || back.IsQuery != tt.res.IsQuery {
			t.Errorf("%s: round trip gave %+v, %v", tt.summary, back, err)
		}
	}
}

func TestStatusJSONKeepsNodeIDsExact(t *testing.T) {
	st := control.Status{NodeID: "3297041220608546238", Leader: &control.NodeRef{NodeID: "18446744073709551615"}}
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["node-id"] != "3297041220608546238" || raw["leader"].(map[string]any)["node-id"] != "18446744073709551615" {
		t.Fatalf("node ids not exact strings: %s", data)
	}
}
