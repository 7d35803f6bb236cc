package cos

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/metrics"
)

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// fullSource makes every metric of package metrics appear in a scrape.
type fullSource struct{}

func (fullSource) Status(context.Context) control.Status {
	return control.Status{State: "running", Role: "voter", Member: true, Address: "10.0.0.1:17666",
		Leader: &control.NodeRef{Address: "10.0.0.1:17666"}, Lease: &control.LeaseStatus{Holder: "controller-0", HeldByMe: true}}
}

func (fullSource) ClusterStatus(context.Context) (control.ClusterStatus, error) {
	l := control.ClusterMember{Address: "10.0.0.1:17666", Role: "voter", Online: true, Leader: true, ControllerID: "0"}
	return control.ClusterStatus{Members: []control.ClusterMember{l}, Leader: &l, LeaseHolder: "controller-0",
		LastBackup: &control.BackupInfo{ID: "b", Time: "2026-01-01T00:00:00Z", Size: 1}}, nil
}

// exposed returns every metric name controllerd's /metrics can expose
// (histograms with their _bucket, _sum and _count series).
func exposed(t *testing.T) map[string]bool {
	m := metrics.New()
	m.SetSource(fullSource{})
	m.Transaction(1, 0, nil)
	m.Decision("serve")
	m.LeaderContact(time.Now())
	m.InstrumentAPI(http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/health", nil))
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		names[n] = true
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			names[n+s] = true
		}
	}
	return names
}

var metricName = regexp.MustCompile(`\bcontrollerd_[a-z_]+`)

// The shipped rule file is a Prometheus rule file with the six alerts the
// charm promises, each with a severity, a summary, a duration, and an
// expression over metrics controllerd really exposes; promtool checks it
// too when it is installed.
func TestAlertRules_ParseAndUseExposedMetrics(t *testing.T) {
	var rf ruleFile
	if err := yaml.Unmarshal(AlertRules(), &rf); err != nil {
		t.Fatal(err)
	}
	names := exposed(t)
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			seen[r.Alert] = true
			if r.Expr == "" || r.For == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("rule %s lacks expr, for, severity, summary or description", r.Alert)
			}
			used := metricName.FindAllString(r.Expr, -1)
			if len(used) == 0 {
				t.Errorf("rule %s uses no controllerd metric: %s", r.Alert, r.Expr)
			}
			for _, n := range used {
				if !names[n] {
					t.Errorf("rule %s uses %s, which controllerd does not expose", r.Alert, n)
				}
			}
		}
	}
	for _, want := range []string{"DqliteNoLeader", "DqliteMembersDown", "DqliteNoRedundancy", "DqliteLeaseNotHeld", "DqliteBackupStale", "DqliteConfigRejected"} {
		if !seen[want] {
			t.Errorf("alert %s missing", want)
		}
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "rules", "/dev/stdin")
		cmd.Stdin = strings.NewReader(string(AlertRules()))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check rules: %v\n%s", err, out)
		}
	}
}

// The dashboard is JSON whose every query uses metrics controllerd
// exposes, and the cos-agent unit data carries it (base64 of .xz), the
// rules and a scrape job for the API port.
func TestUnitData_DashboardRulesAndScrapeJob(t *testing.T) {
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard(), &d); err != nil {
		t.Fatal(err)
	}
	names := exposed(t)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				if !names[n] {
					t.Errorf("panel %q uses %s, which controllerd does not expose", p.Title, n)
				}
			}
		}
	}
	raw, err := UnitData("dqlite-controller", 17070, "/var/lib/dqlite-controller/tls/ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	var ud unitData
	if err := json.Unmarshal([]byte(raw), &ud); err != nil {
		t.Fatal(err)
	}
	if len(ud.MetricsScrapeJobs) != 1 || ud.MetricsScrapeJobs[0].JobName != "dqlite-controller_0_controllerd" || ud.MetricsScrapeJobs[0].StaticConfigs[0].Targets[0] != "localhost:17070" || ud.MetricsScrapeJobs[0].MetricsPath != "/metrics" ||
		ud.MetricsScrapeJobs[0].Scheme != "https" || ud.MetricsScrapeJobs[0].TLSConfig.ServerName != clustertls.ServerName ||
		ud.MetricsScrapeJobs[0].TLSConfig.CAFile != "/var/lib/dqlite-controller/tls/ca.crt" {
		t.Fatalf("scrape jobs %+v", ud.MetricsScrapeJobs)
	}
	if groups, _ := ud.MetricsAlertRules["groups"].([]any); len(groups) != 1 {
		t.Fatalf("alert rules %v", ud.MetricsAlertRules)
	}
	if len(ud.Dashboards) != 1 {
		t.Fatalf("dashboards %v", ud.Dashboards)
	}
	if _, err := base64.StdEncoding.DecodeString(ud.Dashboards[0]); err != nil {
		t.Fatal(err)
	}
}
