package sim

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Opened ports, as Juju's unit agent and controller keep them (juju/juju):
//
//   - open-port and close-port parse "<port>[/<protocol>]",
//     "<from>-<to>[/<protocol>]" or "icmp" (lower-cased first; tcp by
//     default; core/network/portrange.go ParsePortRange, Validate) and
//     apply to every endpoint or, with --endpoints a,b, to each one named
//     (runner/jujuc/ports.go);
//   - the requests are recorded in the hook context and sent to the
//     controller only when the hook exits 0, with its other changes
//     (runner/context/ports.go portRangeChangeRecorder, context.go
//     doFlush); a range that overlaps a different one already opened or
//     requested is refused at once ("port range conflicts with ...");
//   - opened-ports lists the unit's ranges with this hook's pending
//     changes merged in (ports.go OpenedUnitPortRanges; the command's help
//     text still says pending ones are left out, its code does not),
//     sorted by protocol then port (opened-ports.go; --endpoints adds
//     "(*)" for all endpoints or the sorted endpoint names);
//   - the controller applies them with the wildcard rule of
//     domain/port/service/service.go UpdateUnitPorts: opening on every
//     endpoint closes the same range on each single endpoint, closing on
//     one endpoint a range open on every endpoint re-opens it on the
//     others.
//
// The fabric then acts as the cloud's firewall (firewallRules).

// portRange is one range of ports of one protocol; icmp has no ports
// (core/network/portrange.go PortRange: FromPort = ToPort = -1).
type portRange struct {
	from, to int
	proto    string
}

func (p portRange) String() string {
	if p.proto == "icmp" {
		return "icmp"
	}
	if p.from == p.to {
		return fmt.Sprintf("%d/%s", p.from, p.proto)
	}
	return fmt.Sprintf("%d-%d/%s", p.from, p.to, p.proto)
}

func (p portRange) validate() error {
	switch p.proto {
	case "tcp", "udp":
	case "icmp":
		if p.from == -1 && p.to == -1 {
			return nil
		}
		return fmt.Errorf(`protocol "icmp" doesn't support any ports; got "%v"`, p.from)
	default:
		return fmt.Errorf(`invalid protocol %q, expected "tcp", "udp", or "icmp"`, p.proto)
	}
	if p.from > p.to {
		return fmt.Errorf("invalid port range %s", p)
	}
	if p.from < 0 || p.from > 65535 || p.to < 0 || p.to > 65535 {
		return fmt.Errorf("port range bounds must be between 0 and 65535, got %d-%d", p.from, p.to)
	}
	return nil
}

func (p portRange) conflictsWith(o portRange) bool {
	return p.proto == o.proto && p.to >= o.from && o.to >= p.from
}

func (p portRange) less(o portRange) bool {
	if p.proto != o.proto {
		return p.proto < o.proto
	}
	if p.from != o.from {
		return p.from < o.from
	}
	return p.to < o.to
}

// parsePortRange is ParsePortRange: the protocol after the first "/"
// (tcp if none), one port or "from-to", or "icmp".
func parsePortRange(s string) (portRange, error) {
	proto := "tcp"
	if ports, pr, ok := strings.Cut(s, "/"); ok {
		s, proto = ports, pr
	}
	var p portRange
	parts := strings.Split(s, "-")
	switch {
	case len(parts) > 2:
		return p, fmt.Errorf("invalid port range %q", s)
	case len(parts) == 1 && parts[0] == "icmp":
		p.from, p.to = -1, -1
	case len(parts) == 1:
		n, err := strconv.Atoi(parts[0])
		if err != nil {
			return p, fmt.Errorf("invalid port %q: %v", s, err)
		}
		p.from, p.to = n, n
	default:
		var err error
		if p.from, err = strconv.Atoi(parts[0]); err != nil {
			return p, fmt.Errorf("invalid port %q: %v", parts[0], err)
		}
		if p.to, err = strconv.Atoi(parts[1]); err != nil {
			return p, fmt.Errorf("invalid port %q: %v", parts[1], err)
		}
	}
	if p.from == -1 {
		proto = "icmp"
	}
	p.proto = proto
	return p, p.validate()
}

// groupedPorts are port ranges by endpoint; "" is every endpoint
// (network.GroupedPortRanges).
type groupedPorts map[string][]portRange

func (g groupedPorts) has(endpoint string, p portRange) bool {
	return slices.Contains(g[endpoint], p)
}

func (g groupedPorts) add(endpoint string, p portRange) {
	if !g.has(endpoint, p) {
		g[endpoint] = append(g[endpoint], p)
	}
}

func (g groupedPorts) remove(endpoint string, p portRange) {
	if i := slices.Index(g[endpoint], p); i >= 0 {
		g[endpoint] = slices.Delete(g[endpoint], i, i+1)
		if len(g[endpoint]) == 0 {
			delete(g, endpoint)
		}
	}
}

func (g groupedPorts) clone() groupedPorts {
	out := groupedPorts{}
	for ep, rs := range g {
		out[ep] = slices.Clone(rs)
	}
	return out
}

// unique is every range once, sorted (UniquePortRanges, SortPortRanges).
func (g groupedPorts) unique() []portRange {
	var out []portRange
	for _, rs := range g {
		for _, p := range rs {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].less(out[j]) })
	return out
}

// portChanges are one hook's pending open-port and close-port requests.
type portChanges struct {
	open, close groupedPorts
}

// conflictLocked is checkForConflict: a range overlapping a different one
// is a conflict; the same range on the same endpoint already exists (a
// no-op, reported as exists); the same range on another endpoint is fine.
func conflictLocked(unitName, endpoint string, p portRange, other string, ranges groupedPorts, pending bool) (exists bool, err error) {
	for ep, rs := range ranges {
		for _, o := range rs {
			if !p.conflictsWith(o) {
				continue
			}
			if p == o && unitName == other {
				if ep != endpoint {
					continue
				}
				return true, nil
			}
			extra := ""
			if pending {
				extra = " requested earlier"
			}
			return false, fmt.Errorf("port range conflicts with %s (unit %q)%s", o, other, extra)
		}
	}
	return false, nil
}

// machinePortsLocked are the committed ranges of every unit on the
// unit's machine, by unit name.
func (m *Model) machinePortsLocked(mc *machine) map[string]groupedPorts {
	out := map[string]groupedPorts{}
	for _, u := range mc.units {
		if len(u.ports) > 0 {
			out[u.name] = u.ports
		}
	}
	return out
}

// openPortLocked is portRangeChangeRecorder.OpenPortRange.
func (m *Model) openPortLocked(hc *hookContext, endpoint string, p portRange) error {
	u := hc.unit
	pc := &hc.ports
	pc.close.remove(endpoint, p)
	fail := func(err error) error { return fmt.Errorf("cannot open %s (unit %q): %w", p, u.name, err) }
	if exists, err := conflictLocked(u.name, endpoint, p, u.name, pc.open, true); err != nil {
		return fail(err)
	} else if exists {
		return nil
	}
	for other, ranges := range m.machinePortsLocked(u.machine) {
		if exists, err := conflictLocked(u.name, endpoint, p, other, ranges, false); err != nil {
			return fail(err)
		} else if exists {
			return nil
		}
	}
	pc.open.add(endpoint, p)
	return nil
}

// closePortLocked is portRangeChangeRecorder.ClosePortRange: a close that
// conflicts with another unit's range fails; with nothing open on the
// machine it is a no-op.
func (m *Model) closePortLocked(hc *hookContext, endpoint string, p portRange) error {
	u := hc.unit
	pc := &hc.ports
	pc.open.remove(endpoint, p)
	fail := func(err error) error { return fmt.Errorf("cannot close %s (unit %q): %w", p, u.name, err) }
	if exists, err := conflictLocked(u.name, endpoint, p, u.name, pc.close, true); err != nil {
		return fail(err)
	} else if exists {
		return nil
	}
	opened := m.machinePortsLocked(u.machine)
	for other, ranges := range opened {
		if _, err := conflictLocked(u.name, endpoint, p, other, ranges, false); err != nil {
			return fail(err)
		}
	}
	if len(opened) == 0 {
		return nil
	}
	pc.close.add(endpoint, p)
	return nil
}

// toolPort is open-port and close-port (runner/jujuc/ports.go): usage
// errors (exit 2) for a missing or bad range, then the request for every
// endpoint or each one --endpoints names.
func (m *Model) toolPort(hc *hookContext, tool string, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, flagDef{names: []string{"endpoints"}, value: true})
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("no port or range specified")
	}
	p, err := parsePortRange(strings.ToLower(pos[0]))
	if err != nil {
		return toolResponse{}, usageError{err.Error()}
	}
	if len(pos) > 1 {
		return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
	}
	var resp toolResponse
	if _, ok := vals["format"]; ok {
		resp.Stderr = fmt.Appendf(nil, "--format flag deprecated for command %q", tool)
	}
	op := m.openPortLocked
	if tool == "close-port" {
		op = m.closePortLocked
	}
	endpoints := []string{""}
	if e := vals["endpoints"]; e != "" {
		endpoints = strings.Split(e, ",")
	}
	for _, ep := range endpoints {
		if err := op(hc, strings.TrimSpace(ep), p); err != nil {
			resp.Code, resp.Stderr = 1, append(resp.Stderr, "ERROR "+err.Error()+"\n"...)
			return resp, nil
		}
	}
	return resp, nil
}

// toolOpenedPorts is opened-ports (runner/jujuc/opened-ports.go).
func (m *Model) toolOpenedPorts(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, flagDef{names: []string{"endpoints"}})
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) > 0 {
		return toolResponse{}, usagef("unrecognized args: %q", pos)
	}
	ranges := hc.unit.ports.clone()
	for ep, rs := range hc.ports.open {
		for _, p := range rs {
			ranges.add(ep, p)
		}
	}
	for ep, rs := range hc.ports.close {
		for _, p := range rs {
			ranges.remove(ep, p)
		}
	}
	out := []string{}
	for _, p := range ranges.unique() {
		if !isTrue(vals["endpoints"]) {
			out = append(out, p.String())
			continue
		}
		var eps []string
		for ep, rs := range ranges {
			if slices.Contains(rs, p) {
				eps = append(eps, ep)
			}
		}
		sort.Strings(eps)
		descr := strings.Join(eps, ", ")
		if slices.Contains(eps, "") {
			descr = "*"
		}
		out = append(out, fmt.Sprintf("%s (%s)", p, descr))
	}
	return output(vals["format"], out), nil
}

// checkPortsLocked is the controller's check of a hook's port changes
// before it commits anything: the ranges sent must not overlap each other
// unless equal (service.go verifyNoPortRangeConflicts), and every endpoint
// named must be one of the charm's. A failure fails the hook.
func (m *Model) checkPortsLocked(hc *hookContext) string {
	var all []portRange
	for _, g := range []groupedPorts{hc.ports.open, hc.ports.close} {
		for ep, rs := range g {
			if ep != "" && !m.validEndpoint(ep) {
				return fmt.Sprintf("cannot apply changes: failed to update unit ports: endpoint %q of unit %q not found", ep, hc.unit.name)
			}
			all = append(all, rs...)
		}
	}
	for _, a := range all {
		for _, b := range all {
			if a != b && a.conflictsWith(b) {
				return fmt.Sprintf("cannot apply changes: failed to update unit ports: cannot update unit ports with conflict(s): [%s, %s]", a, b)
			}
		}
	}
	return ""
}

// commitPortsLocked applies a hook's port changes once it exited 0, with
// UpdateUnitPorts' wildcard rule, then updates the fabric's firewall.
func (m *Model) commitPortsLocked(hc *hookContext) {
	if len(hc.ports.open)+len(hc.ports.close) == 0 {
		return
	}
	u := hc.unit
	if u.ports == nil {
		u.ports = groupedPorts{}
	}
	open, closing := hc.ports.open.clone(), hc.ports.close.clone()
	endpoints := m.endpointsLocked()
	wildOpened := slices.Clone(u.ports[""])
	// A range closed on one endpoint, unless it is also closed on all.
	closedOn := map[portRange]string{}
	for ep, rs := range hc.ports.close {
		for _, p := range rs {
			if ep != "" {
				closedOn[p] = ep
			}
		}
	}
	for _, p := range hc.ports.close[""] {
		delete(closedOn, p)
	}
	// Opening on one endpoint what is (or is being) opened on all is a no-op.
	wild := append(slices.Clone(wildOpened), open[""]...)
	for ep, rs := range hc.ports.open {
		for _, p := range rs {
			if ep != "" && slices.Contains(wild, p) {
				open.remove(ep, p)
			}
		}
	}
	// Opening or closing on all endpoints closes the range on each one.
	for _, p := range append(slices.Clone(open[""]), hc.ports.close[""]...) {
		for _, ep := range endpoints {
			closing.add(ep, p)
		}
	}
	// Closing on one endpoint a range open on all re-opens it on the others.
	for _, p := range wildOpened {
		ep, ok := closedOn[p]
		if !ok {
			continue
		}
		closing.add("", p)
		for _, other := range endpoints {
			if other != ep {
				open.add(other, p)
			}
		}
		open.remove(ep, p)
	}
	for ep, rs := range closing {
		for _, p := range rs {
			u.ports.remove(ep, p)
		}
	}
	for ep, rs := range open {
		for _, p := range rs {
			u.ports.add(ep, p)
		}
	}
	m.appendUnitLog(u, fmt.Sprintf("opened ports: %v", u.ports.unique()))
	m.updateFirewallLocked()
}

// endpointsLocked are the charm's endpoints (relations and extra
// bindings), sorted.
func (m *Model) endpointsLocked() []string {
	var out []string
	for _, g := range []map[string]map[string]any{m.meta.Peers, m.meta.Requires, m.meta.Provides} {
		for ep := range g {
			out = append(out, ep)
		}
	}
	for ep := range m.meta.ExtraBindings {
		out = append(out, ep)
	}
	sort.Strings(out)
	return out
}

// OpenedPorts is what `juju status` shows as a unit's open ports, sorted
// ("17070/tcp"); nil for an unknown unit.
func (m *Model) OpenedPorts(unitName string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.units[unitName]
	if u == nil {
		return nil
	}
	out := []string{}
	for _, p := range u.ports.unique() {
		out = append(out, p.String())
	}
	return out
}

// firewallTable is the nftables table in the fabric namespace that plays
// the cloud's firewall.
const firewallTable = "dqcsim_firewall"

// firewallRulesLocked renders the fabric's firewall, a cloud's security
// groups for the model (juju/juju: provider/ec2/environ.go setUpGroups
// and the firewaller, internal/worker/firewaller): the machines hosting
// the application's units reach each other on every port (the model's
// group admits its own members); anything else reaching them (an agent
// machine, a machine of another model) gets only the ranges their units
// opened, as if the application were exposed to 0.0.0.0/0 and ::/0.
//
// The table filters bridged frames (family bridge, forward hook). The
// kernel here has no connection tracking for bridged traffic
// (nf_conntrack_bridge: `ct state` is refused with "Protocol error"), so
// TCP is filtered on connection attempts (a SYN without ACK) and replies
// to the protected machines' own connections pass, as with a cloud's
// stateful rules; UDP to a closed port and ICMP echo requests (unless
// icmp is open) are dropped; neighbour discovery always passes.
func (m *Model) firewallRulesLocked() string {
	var model4, model6 []string
	type target struct {
		addr   string
		ranges []portRange
	}
	var targets []target
	for _, mc := range m.machines {
		if mc.agent || mc.dead {
			continue
		}
		open := groupedPorts{}
		for _, u := range mc.units {
			if u.life == lifeDead {
				continue
			}
			for ep, rs := range u.ports {
				for _, p := range rs {
					open.add(ep, p)
				}
			}
		}
		for _, n := range mc.nics {
			if n.addr.Is4() {
				model4 = append(model4, n.addr.String())
			} else {
				model6 = append(model6, n.addr.String())
			}
			targets = append(targets, target{addr: n.addr.String(), ranges: open.unique()})
		}
	}
	sort.Strings(model4)
	sort.Strings(model6)
	sort.Slice(targets, func(i, j int) bool { return targets[i].addr < targets[j].addr })
	var b strings.Builder
	fmt.Fprintf(&b, "table bridge %s {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n", firewallTable)
	if len(model4) > 0 {
		fmt.Fprintf(&b, "\t\tip saddr { %s } accept\n", strings.Join(model4, ", "))
	}
	if len(model6) > 0 {
		fmt.Fprintf(&b, "\t\tip6 saddr { %s } accept\n", strings.Join(model6, ", "))
		b.WriteString("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept\n")
	}
	for _, t := range targets {
		fam, icmpEcho := "ip", "icmp type echo-request"
		if strings.Contains(t.addr, ":") {
			fam, icmpEcho = "ip6", "icmpv6 type echo-request"
		}
		var tcp, udp []string
		icmp := false
		for _, p := range t.ranges {
			s := strconv.Itoa(p.from)
			if p.to != p.from {
				s += "-" + strconv.Itoa(p.to)
			}
			switch p.proto {
			case "tcp":
				tcp = append(tcp, s)
			case "udp":
				udp = append(udp, s)
			case "icmp":
				icmp = true
			}
		}
		if len(tcp) > 0 {
			fmt.Fprintf(&b, "\t\t%s daddr %s tcp dport { %s } accept\n", fam, t.addr, strings.Join(tcp, ", "))
		}
		if len(udp) > 0 {
			fmt.Fprintf(&b, "\t\t%s daddr %s udp dport { %s } accept\n", fam, t.addr, strings.Join(udp, ", "))
		}
		fmt.Fprintf(&b, "\t\t%s daddr %s tcp flags & (syn | ack) == syn drop\n", fam, t.addr)
		fmt.Fprintf(&b, "\t\t%s daddr %s meta l4proto udp drop\n", fam, t.addr)
		if !icmp {
			fmt.Fprintf(&b, "\t\t%s daddr %s %s drop\n", fam, t.addr, icmpEcho)
		}
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// updateFirewallLocked replaces the fabric's firewall table in one nft
// transaction, so no packet ever sees a half-applied rule set.
func (m *Model) updateFirewallLocked() {
	if m.fabric == "" || m.closed {
		return
	}
	rules := m.firewallRulesLocked()
	if rules == m.firewall {
		return
	}
	script := fmt.Sprintf("table bridge %s\ndelete table bridge %s\n%s", firewallTable, firewallTable, rules)
	if err := nftApply(m.fabric, script); err != nil {
		m.log.Error("cannot update the fabric's firewall", "err", err)
		m.firewallErr = err
		return
	}
	m.firewall, m.firewallErr = rules, nil
}

// nftApply runs an nft script in a network namespace.
func nftApply(netns, script string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot run nft in %s: %w: %s", netns, err, bytes.TrimSpace(out))
	}
	return nil
}
