package main_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
)

// scrape GETs /metrics from controller id's API port and returns every
// sample as "name{labels}" -> value (the text format, one sample a line).
func scrape(t *testing.T, c *cluster, id string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.apiAddress(id)+"/metrics", nil)
	// The API port serves TLS (the cluster CA): so does /metrics.
	resp, err := c.httpsClient().Do(req)
	if err != nil {
		t.Fatalf("GET /metrics on controller %s: %v", id, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func wantSample(t *testing.T, s map[string]float64, name string, ok func(float64) bool) {
	t.Helper()
	v, found := s[name]
	if !found || !ok(v) {
		var near []string
		for k, v := range s {
			if strings.HasPrefix(k, strings.SplitN(name, "{", 2)[0]) {
				near = append(near, fmt.Sprintf("%s %v", k, v))
			}
		}
		t.Fatalf("sample %s = %v (found %t); samples of that name: %v", name, v, found, near)
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
func positive(v float64) bool            { return v > 0 }

// /metrics on the API port of a running 3-node cluster: state, role,
// members by role and online, the leader, the lease, transactions,
// decisions, config reloads and the API's requests; a malformed config
// counts as rejected and shows as config_error.
func TestMetrics_ThreeNodesAndARejectedConfig(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.waitOneHolder("")
	c.apiGet("0", "/v1/health", nil)
	var s map[string]float64
	c.waitFor("a scrape that sees every member online and the lease", func() (bool, string) {
		s = scrape(t, c, "0")
		return s[`controllerd_members{online="true",role="voter"}`] == 3 && s["controllerd_lease_held"] == 1,
			fmt.Sprint(s[`controllerd_members{online="true",role="voter"}`], s["controllerd_lease_held"])
	})
	wantSample(t, s, `controllerd_node_state{state="running"}`, eq(1))
	wantSample(t, s, `controllerd_node_state{state="no-quorum"}`, eq(0))
	wantSample(t, s, `controllerd_node_role{role="voter"}`, eq(1))
	wantSample(t, s, "controllerd_node_member", eq(1))
	wantSample(t, s, "controllerd_leader_reachable", eq(1))
	wantSample(t, s, `controllerd_members{online="false",role="voter"}`, eq(0))
	wantSample(t, s, "controllerd_db_transactions_total", positive)
	wantSample(t, s, "controllerd_db_transaction_duration_seconds_count", positive)
	wantSample(t, s, `controllerd_decisions_total{action="serve"}`, positive)
	wantSample(t, s, "controllerd_config_reloads_total", positive)
	wantSample(t, s, "controllerd_config_rejected_total", eq(0))
	wantSample(t, s, "controllerd_config_error", eq(0))
	wantSample(t, s, "controllerd_leader_last_contact_timestamp_seconds", func(v float64) bool {
		return time.Since(time.Unix(int64(v), 0)) < 5*time.Minute
	})
	wantSample(t, s, `controllerd_api_requests_total{code="200"}`, positive)
	leaders := 0
	for _, id := range ids(3) {
		leaders += int(scrape(t, c, id)["controllerd_node_is_leader"])
	}
	if leaders != 1 {
		t.Fatalf("%d nodes report controllerd_node_is_leader 1, want exactly one", leaders)
	}

	if err := controllerconf.WriteFileAtomic(c.node("1").conf, []byte("db-bind-addresses: [oops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the rejected config in the metrics", func() (bool, string) {
		s := scrape(t, c, "1")
		return s["controllerd_config_rejected_total"] >= 1 && s["controllerd_config_error"] == 1,
			fmt.Sprint(s["controllerd_config_rejected_total"], s["controllerd_config_error"])
	})
}
