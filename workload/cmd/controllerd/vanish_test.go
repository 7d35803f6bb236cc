package main_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// machine is a host that can vanish from the network the way a removed
// Juju machine does: controllerd runs in a network namespace of its own,
// linked to the test's namespace by a veth pair, and vanish deletes the
// link, so that packets to its address are never answered again (not even
// by a TCP reset). The other controllers serve on /32 addresses added to
// the loopback interface of the test's namespace (this kernel may lack the
// dummy link type).
type machine struct {
	netns string
	host  string   // the vanishing machine's address
	peers []string // addresses for the controllers that stay
	veth  string   // the link's end in the test's namespace
	inner string   // its end in the machine's namespace
	// shaped says whether the drop qdisc is installed on inner.
	shaped bool
}

func ipRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newMachine sets up the namespace, links and addresses (10.200-249.x.0/24,
// outside the simulator's 10.64-191 range) and removes them at cleanup.
func newMachine(t *testing.T, peers int) *machine {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (network namespaces) and CI is set")
		}
		t.Skip("needs root for network namespaces")
	}
	tag := fmt.Sprintf("%06x", rand.IntN(1<<24))
	subnet := fmt.Sprintf("10.%d.%d.", 200+rand.IntN(50), rand.IntN(250))
	m := &machine{netns: "dqccd-" + tag, host: subnet + "9", veth: "dqcv" + tag}
	m.inner = "dqcp" + tag
	inner := m.inner
	t.Cleanup(func() {
		exec.Command("ip", "route", "del", "unreachable", subnet+"0/24").Run()
		for _, p := range m.peers {
			exec.Command("ip", "addr", "del", p+"/32", "dev", "lo").Run()
		}
		exec.Command("ip", "link", "del", m.veth).Run()
		exec.Command("ip", "netns", "del", m.netns).Run()
	})
	// Once the link is gone, nothing to this subnet may leave through the
	// default route (a stray connection answered by anything but Dqlite
	// makes go-dqlite's legacy-protocol fallback allocate without bound).
	ipRun(t, "route", "add", "unreachable", subnet+"0/24")
	for i := 1; i <= peers; i++ {
		p := fmt.Sprintf("%s%d", subnet, i)
		ipRun(t, "addr", "add", p+"/32", "dev", "lo")
		m.peers = append(m.peers, p)
	}
	ipRun(t, "netns", "add", m.netns)
	ipRun(t, "link", "add", m.veth, "type", "veth", "peer", "name", inner, "netns", m.netns)
	ipRun(t, "link", "set", m.veth, "up")
	ipRun(t, "route", "add", m.host+"/32", "dev", m.veth, "src", m.peers[0])
	ipRun(t, "-n", m.netns, "link", "set", "lo", "up")
	ipRun(t, "-n", m.netns, "addr", "add", m.host+"/32", "dev", inner)
	ipRun(t, "-n", m.netns, "link", "set", inner, "up")
	ipRun(t, "-n", m.netns, "route", "add", subnet+"0/24", "dev", inner)
	return m
}

// dropResets makes the machine send no TCP reset any more: what its peers
// see of a machine that is gone. Without it, a reset sent to a survivor
// between the daemon's exit and vanish would heal that survivor's
// connection, and the test would depend on that timing.
func (m *machine) dropResets(t *testing.T) {
	t.Helper()
	// IPv4 (20-byte header), TCP, RST flag (byte 13 of the TCP header).
	m.drop(t, "match", "ip", "protocol", "6", "0xff", "match", "u8", "0x04", "0x04", "at", "33")
}

// blackhole makes the machine answer nothing any more while its address
// stays routed and its neighbour entry valid: every IPv4 packet it sends
// (SYN-ACKs, resets, FINs, Raft messages) is dropped, ARP still answers.
// A connect to it hangs until the caller gives up and never fails fast
// with "no route to host": what a terminated machine looks like while its
// peers still have it in their neighbour cache, or behind a router.
func (m *machine) blackhole(t *testing.T) {
	t.Helper()
	m.drop(t, "match", "u32", "0", "0")
}

// drop discards the IPv4 packets the machine sends that match (a u32
// selector). tc with htb, u32 and a pfifo of limit 0: this kernel has
// neither netem nor gact.
func (m *machine) drop(t *testing.T, match ...string) {
	t.Helper()
	var cmds [][]string
	if !m.shaped {
		m.shaped = true
		cmds = append(cmds,
			[]string{"qdisc", "add", "dev", m.inner, "root", "handle", "1:", "htb", "default", "1"},
			[]string{"class", "add", "dev", m.inner, "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit"},
			[]string{"class", "add", "dev", m.inner, "parent", "1:", "classid", "1:2", "htb", "rate", "8bit"},
			[]string{"qdisc", "add", "dev", m.inner, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0"})
	}
	filter := append([]string{"filter", "add", "dev", m.inner, "parent", "1:", "protocol", "ip", "u32"}, match...)
	cmds = append(cmds, append(filter, "flowid", "1:2"))
	for _, args := range cmds {
		cmd := exec.Command("ip", append([]string{"netns", "exec", m.netns, "tc"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tc %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// waitMachineRemoved waits until every survivor sees a two-member cluster
// that no longer holds the vanished machine's node.
func (c *cluster) waitMachineRemoved(m *machine, survivors ...string) {
	for _, id := range survivors {
		c.waitFor("controller "+id+" to see the vanished member removed", func() (bool, string) {
			st, err := c.status(id)
			if err != nil {
				return false, err.Error()
			}
			for _, mem := range st.Members {
				if strings.HasPrefix(mem.Address, m.host+":") {
					return false, fmt.Sprintf("%s: %d members, %s still one", st.State, len(st.Members), mem.Address)
				}
			}
			return len(st.Members) == len(survivors), fmt.Sprintf("%s: %d members", st.State, len(st.Members))
		})
	}
}

// vanish cuts the machine off for good.
func (m *machine) vanish(t *testing.T) {
	t.Helper()
	ipRun(t, "link", "del", m.veth)
}

// The Dqlite leader's controller is stopped (it hands over) and its machine
// disappears before the survivors' configs drop it, as with juju
// remove-unit of the Dqlite leader. The survivors' database pools still hold
// connections to it: with go-dqlite v1.11.5 each use answers "EOF" (the
// peer's FIN arrived, no reset ever will) and goes back to the pool. The new
// leader must still read controller_node and remove the departed member
// (before the fix it logged "cannot read controller_node; not removing
// anybody this round" with EOF until the kernel gave up on the sockets).
func TestShrink_VanishedLeaderMachineIsRemovedBySurvivors(t *testing.T) {
	m := newMachine(t, 2)
	c := newCluster(t)
	c.node("0").host, c.node("0").netns = m.host, m.netns
	c.node("1").host = m.peers[0]
	c.node("2").host = m.peers[1]
	c.provision(c.node("1"))
	c.provision(c.node("2"))
	c.form(3)
	c.mustSQL("1", "CREATE TABLE v (id INTEGER PRIMARY KEY)")
	c.makeLeader("0")
	// The survivors' pools connect to the leader (their lease and address
	// writes run every few hundred milliseconds).
	c.writeUntilOK("2", "INSERT INTO v VALUES (1) ON CONFLICT DO NOTHING")

	m.dropResets(t)
	if err := c.stop("0"); err != nil {
		t.Fatalf("controller 0: %v", err)
	}
	m.vanish(t)
	removedAt := time.Now()
	c.writeConfig(c.config("1", "2"), "1", "2")

	c.waitMachineRemoved(m, "1", "2")
	t.Logf("vanished member removed %s after its controller left the config", time.Since(removedAt).Round(100*time.Millisecond))
	c.writeUntilOK("1", "INSERT INTO v VALUES (2) ON CONFLICT DO NOTHING")
	c.writeUntilOK("2", "INSERT INTO v VALUES (3) ON CONFLICT DO NOTHING")
	if n, err := c.count("1", "v"); err != nil || n != 3 {
		t.Fatalf("rows = %d, %v; want 3", n, err)
	}
	res := c.mustSQL("2", "SELECT controller_id FROM controller_node ORDER BY controller_id")
	if len(res.Rows) != 2 {
		t.Fatalf("controller_node after the removal = %v, want controllers 1 and 2", res.Rows)
	}
}

// other returns a controller id other than id.
func (c *cluster) other(id string) string {
	for _, o := range sortedIDs(c.nodes) {
		if o != id {
			return o
		}
	}
	c.t.Fatalf("no controller other than %s", id)
	return ""
}

// The Dqlite leader's machine stops answering without a trace: no reset,
// no FIN, no "no route to host" (its address stays routed and resolved),
// either after its controller stopped and handed over (juju remove-unit)
// or while it was running (the machine died). go-dqlite v1.11.5 tries the
// known nodes one after another with a 5 s dial timeout, so before the fix
// a connect to the vanished address ate the survivors' whole 1-2 s call
// deadlines: they logged "dial tcp <dead>: i/o timeout" followed by
// "i/o timeout" for the live addresses, their own included, could not read
// controller_node and never removed the member. Now every connect is
// bounded by node.DialTimeout and starts at the survivor's own node: the
// survivors (re-)elect a leader, accept writes, remove the member once the
// config drops it, and never time out dialling a live address.
func TestFailover_BlackholedLeaderMachineCostsNoDialStalls(t *testing.T) {
	for _, tc := range []struct {
		name  string
		death bool // killed while running, no hand-over
	}{
		{"RemovedAfterHandOver", false},
		{"MachineDied", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t, 2)
			c := newCluster(t)
			c.node("0").host, c.node("0").netns = m.host, m.netns
			c.node("1").host = m.peers[0]
			c.node("2").host = m.peers[1]
			c.provision(c.node("1"))
			c.provision(c.node("2"))
			c.form(3)
			c.mustSQL("1", "CREATE TABLE v (id INTEGER PRIMARY KEY)")
			c.makeLeader("0")
			// The survivors' pools connect to the leader.
			c.writeUntilOK("1", "INSERT INTO v VALUES (1) ON CONFLICT DO NOTHING")
			c.writeUntilOK("2", "INSERT INTO v VALUES (2) ON CONFLICT DO NOTHING")

			gone := time.Now()
			if tc.death {
				m.blackhole(t)
				c.kill("0")
			} else {
				if err := c.stop("0"); err != nil {
					t.Fatalf("controller 0: %v", err)
				}
				m.blackhole(t)
			}
			for _, id := range []string{"1", "2"} {
				c.waitFor("controller "+id+" to see a surviving leader", func() (bool, string) {
					st, err := c.status(id)
					if err != nil {
						return false, err.Error()
					}
					if st.Leader == nil {
						return false, st.State + ": no leader"
					}
					return !strings.HasPrefix(st.Leader.Address, m.host+":"), st.State + ": leader " + st.Leader.Address
				})
			}
			c.writeUntilOK("1", "INSERT INTO v VALUES (3) ON CONFLICT DO NOTHING")
			c.writeUntilOK("2", "INSERT INTO v VALUES (4) ON CONFLICT DO NOTHING")
			t.Logf("survivors lead and write %s after the machine went silent", time.Since(gone).Round(100*time.Millisecond))

			dropped := time.Now()
			c.writeConfig(c.config("1", "2"), "1", "2")
			c.waitMachineRemoved(m, "1", "2")
			t.Logf("vanished member removed %s after its controller left the config", time.Since(dropped).Round(100*time.Millisecond))
			c.writeUntilOK("1", "INSERT INTO v VALUES (5) ON CONFLICT DO NOTHING")
			c.writeUntilOK("2", "INSERT INTO v VALUES (6) ON CONFLICT DO NOTHING")
			if n, err := c.count("1", "v"); err != nil || n != 6 {
				t.Fatalf("rows = %d, %v; want 6", n, err)
			}

			// A dial to the silent address may time out (bounded); a
			// dial to a live one must never: that was the stall.
			deadDials := 0
			for _, id := range []string{"1", "2"} {
				d := c.node(id)
				d.mu.Lock()
				for _, l := range d.lines {
					if !l.at.After(gone) {
						continue
					}
					if strings.Contains(l.text, "dial tcp "+m.host+":") {
						deadDials++
					}
					for _, live := range []string{"1", "2"} {
						if strings.Contains(l.text, "dial tcp "+c.node(live).host+":") && strings.Contains(l.text, "i/o timeout") {
							t.Errorf("controller %s timed out dialling live controller %s: %s", id, live, l.text)
						}
					}
				}
				d.mu.Unlock()
			}
			t.Logf("failed dials to the silent address logged by the survivors: %d", deadDials)
		})
	}
}
