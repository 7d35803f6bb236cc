// Package metrics is controllerd's /metrics (Prometheus text format, on
// the API port): the node's state and role, the leader, the members by role
// and online, the last contact with the leader, the daemon's transactions,
// config reloads, decisions, the singular-controller lease, backups and
// the API's requests.
//
// Counters are fed by the daemon through small methods (each safe on a nil
// *Metrics, so a daemon without metrics needs no checks); the cluster's
// state is read at scrape time through the Source interface, so a scrape
// always shows what the node knows now. Each Metrics has its own registry:
// no package-level state.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

const namespace = "controllerd"

// Source is what a scrape reads: the daemon's published status and the
// cluster's status (members probed for being online, lease, last backup).
type Source interface {
	Status(ctx context.Context) control.Status
	ClusterStatus(ctx context.Context) (control.ClusterStatus, error)
}

// ScrapeTimeout bounds the cluster read of one scrape (probing members
// takes up to a second).
const ScrapeTimeout = 4 * time.Second

// Metrics holds controllerd's metrics.
type Metrics struct {
	reg *prometheus.Registry

	txTotal    prometheus.Counter
	txErrors   prometheus.Counter
	txRetries  prometheus.Counter
	txDuration prometheus.Histogram

	configReloads  prometheus.Counter
	configRejected prometheus.Counter
	decisions      *prometheus.CounterVec
	leaseChanges   prometheus.Counter
	backupFailures prometheus.Counter
	apiRequests    *prometheus.CounterVec
	apiInFlight    prometheus.Gauge

	mu            sync.Mutex
	src           Source
	leaderContact time.Time
	lastHolder    string
}

// New returns the metrics with their registry (plus Go and process
// collectors).
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		txTotal: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "db_transactions_total",
			Help: "Transactions the daemon ran on the controller database (each retried transaction counts once)."}),
		txErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "db_transaction_errors_total",
			Help: "Transactions that ended in an error after their retries."}),
		txRetries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "db_transaction_retries_total",
			Help: "Extra attempts of transactions (busy database, lost connection, leader change)."}),
		txDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "db_transaction_duration_seconds",
			Help: "Time of a transaction with all its attempts.", Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		configReloads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "config_reloads_total",
			Help: "Times a changed, valid controller.conf was taken."}),
		configRejected: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "config_rejected_total",
			Help: "Times controller.conf was malformed (the last good config stays)."}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "decisions_total",
			Help: "Membership decisions logged, by action."}, []string{"action"}),
		leaseChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "lease_holder_changes_total",
			Help: "Changes of the singular-controller lease holder seen by this node's scrapes."}),
		backupFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "backup_failures_total",
			Help: "Backups requested through this node (create-backup) that failed."}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "api_requests_total",
			Help: "HTTP API requests served, by status code."}, []string{"code"}),
		apiInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "api_requests_in_flight",
			Help: "HTTP API requests being served (long polls included): the API's open client connections at work."}),
	}
	m.reg.MustRegister(m.txTotal, m.txErrors, m.txRetries, m.txDuration, m.configReloads, m.configRejected,
		m.decisions, m.leaseChanges, m.backupFailures, m.apiRequests, m.apiInFlight,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		clusterCollector{m})
	return m
}

// SetSource sets what scrapes read (the daemon, once it exists).
func (m *Metrics) SetSource(s Source) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.src = s
	m.mu.Unlock()
}

// Transaction implements dbtx.Observer.
func (m *Metrics) Transaction(attempts int, took time.Duration, err error) {
	if m == nil {
		return
	}
	m.txTotal.Inc()
	if attempts > 1 {
		m.txRetries.Add(float64(attempts - 1))
	}
	if err != nil {
		m.txErrors.Inc()
	}
	m.txDuration.Observe(took.Seconds())
}

// ConfigReloaded counts a taken config; ConfigRejected a malformed one.
func (m *Metrics) ConfigReloaded() {
	if m != nil {
		m.configReloads.Inc()
	}
}

// ConfigRejected counts a malformed config file.
func (m *Metrics) ConfigRejected() {
	if m != nil {
		m.configRejected.Inc()
	}
}

// Decision counts a logged decision.
func (m *Metrics) Decision(action string) {
	if m != nil {
		m.decisions.WithLabelValues(action).Inc()
	}
}

// BackupFailed counts a failed requested backup.
func (m *Metrics) BackupFailed() {
	if m != nil {
		m.backupFailures.Inc()
	}
}

// LeaderContact records the last time this node saw a leader.
func (m *Metrics) LeaderContact(at time.Time) {
	if m == nil {
		return
	}
	m.mu.Lock()
	if at.After(m.leaderContact) {
		m.leaderContact = at
	}
	m.mu.Unlock()
}

// Registry is the metrics' registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// InstrumentAPI counts the requests h serves.
func (m *Metrics) InstrumentAPI(h http.Handler) http.Handler {
	return promhttp.InstrumentHandlerInFlight(m.apiInFlight, promhttp.InstrumentHandlerCounter(m.apiRequests, h))
}

// clusterCollector reads the node's and the cluster's state at scrape time.
type clusterCollector struct{ m *Metrics }

var (
	descUp = prometheus.NewDesc(namespace+"_node_state", "1 for the node's current state (waiting, joining, running, no-quorum, removed, ...).",
		[]string{"state"}, nil)
	descRole = prometheus.NewDesc(namespace+"_node_role", "1 for the node's Dqlite role (voter, stand-by, spare, none).",
		[]string{"role"}, nil)
	descMember = prometheus.NewDesc(namespace+"_node_member", "1 while the node is a member of the cluster.", nil, nil)
	descLeader = prometheus.NewDesc(namespace+"_leader", "1 while a Dqlite leader is reachable; the label names it.",
		[]string{"address", "controller_id"}, nil)
	descReachable  = prometheus.NewDesc(namespace+"_leader_reachable", "1 while this node reaches a Dqlite leader.", nil, nil)
	descIsLeader   = prometheus.NewDesc(namespace+"_node_is_leader", "1 while this node is the Dqlite leader.", nil, nil)
	descMembers    = prometheus.NewDesc(namespace+"_members", "Members of the cluster by role and online (answered a request within 1 s).", []string{"role", "online"}, nil)
	descContact    = prometheus.NewDesc(namespace+"_leader_last_contact_timestamp_seconds", "When this node last reached a leader (Unix time).", nil, nil)
	descLease      = prometheus.NewDesc(namespace+"_lease_holder", "1 for the singular-controller lease holder as this node reads it; no series while nobody holds it.", []string{"holder"}, nil)
	descLeaseHeld  = prometheus.NewDesc(namespace+"_lease_held", "1 while the singular-controller lease is held by anyone.", nil, nil)
	descLeaseMine  = prometheus.NewDesc(namespace+"_lease_held_by_me", "1 while this controller holds the singular-controller lease.", nil, nil)
	descBackupTime = prometheus.NewDesc(namespace+"_backup_last_success_timestamp_seconds", "When the newest backup of the cluster was taken (Unix time).", nil, nil)
	descBackupSize = prometheus.NewDesc(namespace+"_backup_last_size_bytes", "Size of the newest backup of the cluster.", nil, nil)
	descConfigErr  = prometheus.NewDesc(namespace+"_config_error", "1 while controller.conf is malformed (the last good config is used).", nil, nil)
	descScrapeErr  = prometheus.NewDesc(namespace+"_cluster_scrape_error", "1 when the cluster's status could not be read for this scrape.", nil, nil)
)

var states = []string{"waiting", "refused", "bootstrapping", "joining", "starting", "running", "no-quorum", "leaving",
	"moving", "removed", "reconfiguring", "rebinding", "error", "stopping", "stepping-down"}

var roles = []string{"voter", "stand-by", "spare", "none"}

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descRole, descMember, descLeader, descReachable, descIsLeader, descMembers, descContact,
		descLease, descLeaseHeld, descLeaseMine, descBackupTime, descBackupSize, descConfigErr, descScrapeErr} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.mu.Lock()
	src, contact := m.src, m.leaderContact
	m.mu.Unlock()
	if src == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), ScrapeTimeout)
	defer cancel()
	st := src.Status(ctx)
	for _, s := range states {
		gauge(ch, descUp, b2f(st.State == s), s)
	}
	role := st.Role
	if role == "" {
		role = "none"
	}
	for _, r := range roles {
		gauge(ch, descRole, b2f(role == r), r)
	}
	gauge(ch, descMember, b2f(st.Member))
	gauge(ch, descReachable, b2f(st.Leader != nil))
	gauge(ch, descConfigErr, b2f(st.ConfigError != ""))
	if !contact.IsZero() {
		gauge(ch, descContact, float64(contact.UnixNano())/1e9)
	}
	if st.Lease != nil {
		gauge(ch, descLeaseMine, b2f(st.Lease.HeldByMe))
	} else {
		gauge(ch, descLeaseMine, 0)
	}
	cs, err := src.ClusterStatus(ctx)
	gauge(ch, descScrapeErr, b2f(err != nil))
	if err != nil {
		return
	}
	counts := map[[2]string]int{}
	for _, r := range roles[:3] {
		counts[[2]string{r, "true"}], counts[[2]string{r, "false"}] = 0, 0
	}
	for _, mem := range cs.Members {
		counts[[2]string{mem.Role, strconv.FormatBool(mem.Online)}]++
	}
	for k, n := range counts {
		gauge(ch, descMembers, float64(n), k[0], k[1])
	}
	if l := cs.Leader; l != nil {
		gauge(ch, descLeader, 1, l.Address, l.ControllerID)
		gauge(ch, descIsLeader, b2f(l.Address == st.Address))
	} else {
		gauge(ch, descIsLeader, 0)
	}
	gauge(ch, descLeaseHeld, b2f(cs.LeaseHolder != ""))
	if cs.LeaseHolder != "" {
		gauge(ch, descLease, 1, cs.LeaseHolder)
	}
	m.mu.Lock()
	if cs.LeaseHolder != "" && m.lastHolder != "" && cs.LeaseHolder != m.lastHolder {
		m.leaseChanges.Inc()
	}
	if cs.LeaseHolder != "" {
		m.lastHolder = cs.LeaseHolder
	}
	m.mu.Unlock()
	if b := cs.LastBackup; b != nil {
		if t, err := time.Parse(time.RFC3339Nano, b.Time); err == nil {
			gauge(ch, descBackupTime, float64(t.UnixNano())/1e9)
		}
		gauge(ch, descBackupSize, float64(b.Size))
	}
}
