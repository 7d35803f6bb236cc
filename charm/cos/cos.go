// Package cos is what the charm gives the Canonical Observability Stack
// over the cos-agent relation (interface cos_agent, as machine charms
// integrate with COS through the grafana-agent or opentelemetry-collector
// subordinate): a scrape job for controllerd's /metrics, the alert rules
// and the Grafana dashboard shipped in the charm.
//
// The wire format is the cos_agent library's CosAgentProviderUnitData
// (canonical/grafana-agent-operator: lib/charms/grafana_agent/v0/cos_agent.py):
// one unit data key, "config", holding JSON with metrics_alert_rules (a
// Prometheus rule file as an object), log_alert_rules, dashboards (each
// base64 of an .xz-compressed dashboard JSON), metrics_scrape_jobs and
// log_slots.
package cos

import (
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/juju/dqlite-controller/clustertls"
	"gopkg.in/yaml.v3"
)

// Endpoint is the relation endpoint (metadata.yaml provides).
const Endpoint = "cos-agent"

// Key is the unit data key the cos_agent library reads.
const Key = "config"

//go:embed alert_rules.yaml
var alertRules []byte

//go:embed dashboard.json
var dashboard []byte

// AlertRules is the Prometheus rule file shipped in the charm.
func AlertRules() []byte { return alertRules }

// Dashboard is the Grafana dashboard shipped in the charm.
func Dashboard() []byte { return dashboard }

// unitData is CosAgentProviderUnitData.
type unitData struct {
	MetricsAlertRules map[string]any `json:"metrics_alert_rules"`
	LogAlertRules     map[string]any `json:"log_alert_rules"`
	Dashboards        []string       `json:"dashboards"`
	MetricsScrapeJobs []scrapeJob    `json:"metrics_scrape_jobs"`
	LogSlots          []string       `json:"log_slots"`
}

type scrapeJob struct {
	JobName       string         `json:"job_name"`
	MetricsPath   string         `json:"metrics_path"`
	Scheme        string         `json:"scheme"`
	TLSConfig     tlsConfig      `json:"tls_config"`
	StaticConfigs []staticConfig `json:"static_configs"`
}

// tlsConfig is a Prometheus scrape job's tls_config: the API serves the
// node certificate, which carries the pinned name, not "localhost".
type tlsConfig struct {
	CAFile     string `json:"ca_file"`
	ServerName string `json:"server_name"`
}

type staticConfig struct {
	Targets []string `json:"targets"`
}

// UnitData is the value of Key for a unit of application app whose
// controllerd serves its API (and /metrics) over TLS on apiPort: the
// subordinate on the same machine scrapes localhost, verifying against the
// CA bundle in caFile. The job is named as the library's provider names
// its jobs (COSAgentProvider._scrape_jobs: <app>_<index>_<job name>), so
// that it stays unique among the principals one agent scrapes.
func UnitData(app string, apiPort int, caFile string) (string, error) {
	var rules map[string]any
	if err := yaml.Unmarshal(alertRules, &rules); err != nil {
		return "", fmt.Errorf("cannot parse the shipped alert rules: %w", err)
	}
	d := unitData{
		MetricsAlertRules: rules,
		LogAlertRules:     map[string]any{},
		Dashboards:        []string{base64.StdEncoding.EncodeToString(storeXZ(dashboard))},
		MetricsScrapeJobs: []scrapeJob{{JobName: app + "_0_controllerd", MetricsPath: "/metrics", Scheme: "https",
			TLSConfig:     tlsConfig{CAFile: caFile, ServerName: clustertls.ServerName},
			StaticConfigs: []staticConfig{{Targets: []string{"localhost:" + strconv.Itoa(apiPort)}}}}},
		LogSlots: []string{},
	}
	data, err := json.Marshal(d)
	if err != nil {
		return "", err
	}
	return string(data), nil
}
