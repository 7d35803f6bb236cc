// Package cos_test relates the built charm to a grafana-agent-like
// subordinate on the simulator and checks what the charm publishes over
// cos-agent against the cos_agent library's data format
// (canonical/grafana-agent-operator: lib/charms/grafana_agent/v0/cos_agent.py,
// CosAgentProviderUnitData, nested as JSON under the unit data key
// "config"), then scrapes the advertised endpoint as the job says.
package cos_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

const (
	app    = "dqlite-controller"
	remote = "grafana-agent"
)

// providerUnitData is CosAgentProviderUnitData: the required fields (no
// default in the pydantic model) and the optional ones the requirer
// accepts; anything else is an error here, so that a typo cannot hide.
type providerUnitData struct {
	MetricsAlertRules *struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"metrics_alert_rules"`
	LogAlertRules     *map[string]any `json:"log_alert_rules"`
	Dashboards        *[]string       `json:"dashboards"`
	MetricsScrapeJobs *[]struct {
		JobName     string `json:"job_name"`
		MetricsPath string `json:"metrics_path"`
		Scheme      string `json:"scheme"`
		TLSConfig   struct {
			CAFile     string `json:"ca_file"`
			ServerName string `json:"server_name"`
		} `json:"tls_config"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"metrics_scrape_jobs"`
	LogSlots         *[]string `json:"log_slots"`
	Subordinate      *bool     `json:"subordinate"`
	TracingProtocols *[]string `json:"tracing_protocols"`
}

var metricName = regexp.MustCompile(`\bcontrollerd_[a-z_]+`)

// Two units related to grafana-agent: each runs cos-agent-relation-created,
// then -joined and -changed for its own subordinate only (JUJU_REMOTE_APP
// grafana-agent), and publishes "config" as the cos_agent library's
// provider does: the six alert rules over metrics controllerd exposes, a
// dashboard (base64 of .xz JSON), a scrape job of localhost:<api-port>
// over https verified by the unit's CA with the pinned server name. A
// scrape of that target, as Prometheus would run the job, answers
// Prometheus text with every metric the rules and the dashboard use.
func TestCOS_AgentRelationDataAndScrape(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	if err := m.Relate("cos-agent", remote); err != nil {
		t.Fatal(err)
	}
	us := simtest.Units(m)
	var data map[string]map[string]string
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		data = m.RelationData("cos-agent")
		for _, u := range us {
			if data[u]["config"] == "" {
				return fmt.Errorf("%s has published no cos-agent config yet: %v", u, data[u])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)

	subs := m.RemoteUnits("cos-agent", remote)
	for _, u := range us {
		var seen []string
		for _, h := range m.History(u) {
			if strings.HasPrefix(h.Hook, "cos-agent-relation-") {
				if h.RemoteApp != remote || h.ExitCode != 0 {
					t.Fatalf("%s ran %+v", u, h)
				}
				seen = append(seen, h.Hook+"("+h.RemoteUnit+")")
			}
		}
		want := []string{"cos-agent-relation-created()", "cos-agent-relation-joined(" + subs[u] + ")", "cos-agent-relation-changed(" + subs[u] + ")"}
		if len(seen) < 3 || !slices.Equal(seen[:3], want) {
			t.Fatalf("%s ran %v, want %v first (its own subordinate only)", u, seen, want)
		}
	}

	wantAlerts := []string{"DqliteBackupStale", "DqliteConfigRejected", "DqliteLeaseNotHeld", "DqliteMembersDown", "DqliteNoLeader", "DqliteNoRedundancy"}
	for _, u := range us {
		raw := data[u]["config"]
		dec := json.NewDecoder(strings.NewReader(raw))
		dec.DisallowUnknownFields()
		var d providerUnitData
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s's config is not CosAgentProviderUnitData: %v\n%s", u, err, raw)
		}
		if d.MetricsAlertRules == nil || d.LogAlertRules == nil || d.Dashboards == nil || d.MetricsScrapeJobs == nil || d.LogSlots == nil {
			t.Fatalf("%s's config lacks a required field of CosAgentProviderUnitData: %s", u, raw)
		}

		var alerts, used []string
		for _, g := range d.MetricsAlertRules.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
					t.Fatalf("incomplete rule %+v", r)
				}
				if r.For != "" {
					if _, err := time.ParseDuration(r.For); err != nil {
						t.Fatalf("rule %s: for %q: %v", r.Alert, r.For, err)
					}
				}
				alerts = append(alerts, r.Alert)
				used = append(used, metricName.FindAllString(r.Expr, -1)...)
			}
		}
		sort.Strings(alerts)
		if !slices.Equal(alerts, wantAlerts) {
			t.Fatalf("alerts %v, want %v", alerts, wantAlerts)
		}

		if len(*d.Dashboards) != 1 {
			t.Fatalf("%d dashboards, want 1", len(*d.Dashboards))
		}
		dash := decodeDashboard(t, (*d.Dashboards)[0])
		if dash.Title == "" || len(dash.Panels) == 0 {
			t.Fatalf("dashboard %q has %d panels", dash.Title, len(dash.Panels))
		}
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				used = append(used, metricName.FindAllString(tg.Expr, -1)...)
			}
		}

		jobs := *d.MetricsScrapeJobs
		if len(jobs) != 1 {
			t.Fatalf("%d scrape jobs, want 1: %+v", len(jobs), jobs)
		}
		j := jobs[0]
		// The provider library names each job <app>_<index>_<name>.
		if j.JobName != app+"_0_controllerd" || j.MetricsPath != "/metrics" || j.Scheme != "https" ||
			len(j.StaticConfigs) != 1 || !slices.Equal(j.StaticConfigs[0].Targets, []string{"localhost:17070"}) ||
			j.TLSConfig.ServerName != "dqlite-controller.cluster" || j.TLSConfig.CAFile != "/var/lib/juju/agents/controller-"+strings.TrimPrefix(u, app+"/")+"/tls/ca.crt" {
			t.Fatalf("%s's scrape job %+v", u, j)
		}
		ca, _, err := m.Exec(simtest.CtxFor(t, 30*time.Second), u, "cat", j.TLSConfig.CAFile)
		if err != nil || strings.TrimSpace(string(ca)) != strings.TrimSpace(m.ControllerCACert()) {
			t.Fatalf("%s: ca_file %s is not the cluster CA (%v):\n%s", u, j.TLSConfig.CAFile, err, ca)
		}

		// controllerd_api_requests_total{code} (a dashboard panel) counts
		// API requests, not scrapes, and has no series before the first
		// one: on a model without agents, make one, as an agent would.
		get(t, m, u, j.TLSConfig.CAFile, j.TLSConfig.ServerName, j.StaticConfigs[0].Targets[0], "/v1/health")
		families := scrape(t, m, u, j.TLSConfig.CAFile, j.TLSConfig.ServerName, j.StaticConfigs[0].Targets[0], j.MetricsPath)
		for _, name := range used {
			if !families[name] {
				t.Errorf("%s's /metrics lacks %s, which the alert rules or the dashboard use", u, name)
			}
		}
		for _, name := range []string{"controllerd_node_state", "controllerd_leader_reachable", "controllerd_members", "controllerd_db_transactions_total", "go_goroutines", "process_resident_memory_bytes"} {
			if !families[name] {
				t.Errorf("%s's /metrics lacks %s", u, name)
			}
		}
	}
}

type dashboard struct {
	Title  string `json:"title"`
	Panels []struct {
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// decodeDashboard undoes cosl's GrafanaDashboard._serialize (base64 of
// lzma.compress) with Python's lzma, as the requirer does.
func decodeDashboard(t *testing.T, s string) dashboard {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || !bytes.HasPrefix(raw, []byte("\xfd7zXZ\x00")) {
		t.Fatalf("dashboard is not base64 of an .xz stream: %v", err)
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 decodes the dashboard as the requirer does: %v", err)
	}
	cmd := exec.Command(py, "-c", "import lzma,sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("Python's lzma cannot decode the dashboard: %v", err)
	}
	var d dashboard
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	return d
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? ([-+]?[0-9.eE+-]+|NaN|[+-]Inf)( -?[0-9]+)?$`)

// scrape GETs https://<serverName><path> on the unit's machine, connecting
// to target and verifying the server against caFile for serverName, as
// Prometheus does for a job with tls_config {ca_file, server_name}; it
// checks the Prometheus text format line by line and returns the metric
// families it holds.
func scrape(t *testing.T, m *sim.Model, unit, caFile, serverName, target, path string) map[string]bool {
	t.Helper()
	body := get(t, m, unit, caFile, serverName, target, path)
	families := map[string]bool{}
	for _, line := range strings.Split(strings.TrimRight(string(body), "\n"), "\n") {
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			families[strings.Fields(f)[0]] = true
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		mm := sampleLine.FindStringSubmatch(line)
		if mm == nil {
			t.Fatalf("%s: not a Prometheus text line: %q", unit, line)
		}
		families[mm[1]] = true
	}
	t.Logf("%s: /metrics has %d families in %d bytes", unit, len(families), len(body))
	return families
}

// get is an HTTPS GET of https://<serverName>:<port><path> on the unit's
// machine, connected to target and verified against caFile for
// serverName (Prometheus's tls_config {ca_file, server_name}).
func get(t *testing.T, m *sim.Model, unit, caFile, serverName, target, path string) []byte {
	t.Helper()
	_, port, _ := strings.Cut(target, ":")
	var body []byte
	err := probe.Eventually(simtest.CtxFor(t, time.Minute), time.Second, func() error {
		out, stderr, err := m.Exec(simtest.CtxFor(t, 30*time.Second), unit, "curl", "-sS", "--fail", "--max-time", "10",
			"--cacert", caFile, "--connect-to", serverName+":"+port+":"+target,
			"-H", "Accept: text/plain", "https://"+serverName+":"+port+path)
		if err != nil {
			return fmt.Errorf("curl: %v: %s", err, stderr)
		}
		body = out
		return nil
	})
	if err != nil {
		t.Fatalf("cannot GET %s from %s on %s: %v", path, target, unit, err)
	}
	return body
}
