package peers_test

import (
	"slices"
	"testing"

	"github.com/juju/dqlite-controller/charm/peers"
)

func TestCurrentRotation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content peers.CAContent
		app     peers.Rotation
		want    peers.Rotation
	}{
		{"no rotation", peers.CAContent{Issuing: "A"}, peers.Rotation{}, peers.Rotation{}},
		{"step 1 from the content", peers.CAContent{Issuing: "A", Others: []string{"B"}, Next: "B"}, peers.Rotation{}, peers.Rotation{Step: 1, From: "A", To: "B"}},
		{"step 2 from the content", peers.CAContent{Issuing: "B", Others: []string{"A"}}, peers.Rotation{Step: 1, From: "A", To: "B"}, peers.Rotation{Step: 2, From: "A", To: "B"}},
		{"step 3 needs the application data", peers.CAContent{Issuing: "B"}, peers.Rotation{Step: 3, From: "A", To: "B"}, peers.Rotation{Step: 3, From: "A", To: "B"}},
		{"a stale step 3 for another CA is no rotation", peers.CAContent{Issuing: "C"}, peers.Rotation{Step: 3, From: "A", To: "B"}, peers.Rotation{}},
		{"the content wins over stale application data", peers.CAContent{Issuing: "A", Others: []string{"B"}, Next: "B"}, peers.Rotation{Step: 3, From: "X", To: "A"}, peers.Rotation{Step: 1, From: "A", To: "B"}},
	} {
		if got := peers.CurrentRotation(tc.content, tc.app); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestRotation_WaitingAndDone(t *testing.T) {
	report := func(issuer string, trusts ...string) string {
		return peers.CATrust{Trusts: trusts, Issuer: issuer}.Encode()
	}
	units := []string{"app/10", "app/2", "app/0"}
	for _, tc := range []struct {
		name    string
		rot     peers.Rotation
		reports map[string]string
		want    []string
	}{
		{"step 1: one unit trusts only the old CA, one never reported, one bad report", peers.Rotation{Step: 1, From: "A", To: "B"},
			map[string]string{"app/0": report("A", "A", "B"), "app/2": report("A", "A"), "app/10": "{not json"}, []string{"app/2", "app/10"}},
		{"step 1 done everywhere", peers.Rotation{Step: 1, From: "A", To: "B"},
			map[string]string{"app/0": report("A", "B", "A"), "app/2": report("A", "A", "B"), "app/10": report("B", "A", "B")}, nil},
		{"step 2: a certificate still from the old CA", peers.Rotation{Step: 2, From: "A", To: "B"},
			map[string]string{"app/0": report("B", "A", "B"), "app/2": report("A", "A", "B"), "app/10": report("B", "A", "B")}, []string{"app/2"}},
		{"step 3: one still trusts the old CA", peers.Rotation{Step: 3, From: "A", To: "B"},
			map[string]string{"app/0": report("B", "B"), "app/2": report("B", "B"), "app/10": report("B", "A", "B")}, []string{"app/10"}},
		{"step 3 done", peers.Rotation{Step: 3, From: "A", To: "B"},
			map[string]string{"app/0": report("B", "B"), "app/2": report("B", "B"), "app/10": report("B", "B")}, nil},
	} {
		if got := tc.rot.Waiting(units, tc.reports); !slices.Equal(got, tc.want) {
			t.Errorf("%s: waiting for %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRotation_MessagesAndEncoding(t *testing.T) {
	r := peers.Rotation{Step: 2, From: "A", To: "B"}
	if got, want := r.WaitingMessage([]string{"dqlite-controller/2"}), "rotating the cluster CA: step 2/3, waiting for dqlite-controller/2 to re-issue its certificate"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	if got := (peers.Rotation{Step: 1, From: "A", To: "B"}).WaitingMessage([]string{"a/1", "a/2"}); got != "rotating the cluster CA: step 1/3, waiting for a/1, a/2 to trust the new CA" {
		t.Errorf("message %q", got)
	}
	if got := peers.ParseRotation(r.Encode()); got != r {
		t.Errorf("round trip: %+v", got)
	}
	for _, bad := range []string{"", "{", `{"step":4,"from":"A","to":"B"}`, `{"step":1,"from":"","to":"B"}`} {
		if got := peers.ParseRotation(bad); got.Step != 0 {
			t.Errorf("ParseRotation(%q) = %+v, want none", bad, got)
		}
	}
	if r.Next().Step != 3 || (peers.Rotation{Step: 3, From: "A", To: "B"}).Next().Step != 0 {
		t.Error("Next does not go 2 -> 3 -> none")
	}
	if (peers.Rotation{}).Encode() != "" {
		t.Error("no rotation encodes as a value")
	}
	if _, ok := peers.ParseCATrust(`{"trusts":[],"issuer":"A"}`); ok {
		t.Error("a report trusting nothing was accepted")
	}
}
