package charm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
)

// priority orders statuses as ops' collect-status does:
// blocked > maintenance > waiting > active.
func priority(s hooktools.Status) int {
	switch s {
	case hooktools.StatusBlocked:
		return 4
	case hooktools.StatusMaintenance:
		return 3
	case hooktools.StatusWaiting:
		return 2
	case hooktools.StatusActive:
		return 1
	}
	return 0
}

// statusCollector gathers the statuses a hook finds and sets the most
// important one (the first one added, among equals) once at the end.
type statusCollector struct {
	status  hooktools.Status
	message string
}

func (c *statusCollector) add(s hooktools.Status, msg string) {
	if priority(s) > priority(c.status) {
		c.status, c.message = s, msg
	}
}

func (c *statusCollector) apply(ctx context.Context, tools *hooktools.Client) error {
	if c.status == "" {
		return nil
	}
	return tools.StatusSet(ctx, c.status, c.message)
}

// WorkloadStatus is the JSON `controllerd status --format=json` prints.
type WorkloadStatus struct {
	ControllerID string         `json:"controller-id"`
	NodeID       string         `json:"node-id"`
	Address      string         `json:"address"`
	Role         string         `json:"role"`
	Member       bool           `json:"member"`
	Leader       *WorkloadNode  `json:"leader"`
	Members      []WorkloadNode `json:"members"`
	State        string         `json:"state"`
	Message      string         `json:"message"`
	ConfigError  string         `json:"config-error"`
	// Lease is the singular-controller lease; absent from older daemons
	// and null while the daemon's singular worker knows nothing.
	Lease *WorkloadLease `json:"lease"`
}

// WorkloadLease is the singular-controller lease in WorkloadStatus.
type WorkloadLease struct {
	Holder   string `json:"holder"`
	Expiry   string `json:"expiry"` // RFC 3339, the database's clock
	HeldByMe bool   `json:"held-by-me"`
}

// WorkloadNode is one Dqlite node in WorkloadStatus.
type WorkloadNode struct {
	NodeID  string `json:"node-id"`
	Address string `json:"address"`
	Role    string `json:"role,omitempty"`
}

// describeWorkload turns controllerd's status into the unit status, e.g.
// "voter, leader; 3 members; singular-controller lease: controller-1 until
// 12:00:03Z" or "spare; 2 members (1 voter: no redundancy)".
func describeWorkload(st *WorkloadStatus) (hooktools.Status, string) {
	if st.ConfigError != "" {
		return hooktools.StatusBlocked, "controllerd rejects controller.conf: " + st.ConfigError
	}
	if !st.Member || st.Role == "" || (st.State != "" && st.State != "running") {
		msg := st.Message
		if msg == "" {
			msg = st.State
		}
		if msg == "" {
			msg = "not a cluster member yet"
		}
		switch st.State {
		case "refused", "error":
			// The daemon will not go on by itself: an operator must act
			// (e.g. a node certificate of another controller), so the message says how.
			return hooktools.StatusBlocked, "controllerd: " + msg
		}
		return hooktools.StatusWaiting, "controllerd: " + msg
	}
	var b strings.Builder
	b.WriteString(st.Role)
	if st.Leader != nil && st.Leader.NodeID != "" && st.Leader.NodeID == st.NodeID {
		b.WriteString(", leader")
	}
	n := len(st.Members)
	if n == 1 {
		b.WriteString("; 1 member")
	} else {
		fmt.Fprintf(&b, "; %d members", n)
	}
	voters := 0
	for _, m := range st.Members {
		if m.Role == "voter" {
			voters++
		}
	}
	switch {
	case voters == 1:
		b.WriteString(" (1 voter: no redundancy)")
	case voters == 2:
		b.WriteString(" (2 voters: no redundancy)")
	}
	if l := st.Lease; l != nil {
		b.WriteString("; singular-controller lease: ")
		if l.Holder == "" {
			b.WriteString("not held")
		} else {
			fmt.Fprintf(&b, "%s until %s", l.Holder, shortTime(l.Expiry))
		}
	}
	return hooktools.StatusActive, b.String()
}

// shortTime prints an RFC 3339 time as UTC time of day ("12:00:03Z"):
// a lease lasts seconds, so the date would only lengthen the one-line
// status. Anything else is printed as given.
func shortTime(s string) string {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return s
	}
	return t.UTC().Format("15:04:05Z")
}
