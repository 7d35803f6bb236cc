package peers_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/controllerconf"
)

const app = "dqlite-controller"

func unit(n string) string { return app + "/" + n }

func data(id, addr string) map[string]string {
	return map[string]string{peers.KeyAgentID: id, peers.KeyBindAddress: addr}
}

// view is the leader dqlite-controller/0 at 10.0.0.0 with peers "N=addr"
// in its relation view (N: unit number, addr: its published address, ""
// for none).
func view(list string, peerSpecs ...string) peers.View {
	v := peers.View{App: app, AgentID: "0", Unit: unit("0"), Own: "10.0.0.0",
		Units: []string{unit("0")}, PeerData: map[string]map[string]string{}, AppData: map[string]string{}}
	if list != "" {
		v.AppData[peers.KeyBindAddresses] = list
	}
	for _, p := range peerSpecs {
		n, addr, _ := strings.Cut(p, "=")
		v.Units = append(v.Units, unit(n))
		if addr != "" {
			v.PeerData[unit(n)] = data(n, addr)
		}
	}
	return v
}

func TestAggregate(t *testing.T) {
	tests := []struct {
		summary   string
		view      func() peers.View
		entries   map[string]string
		set       map[string]string
		ignored   []string // units
		kept      []string
		dupes     []peers.Duplicate
		bootstrap string
	}{{
		summary:   "first aggregation: the leader lists itself and chooses itself as the bootstrap node",
		view:      func() peers.View { return view("") },
		entries:   map[string]string{"0": "10.0.0.0"},
		set:       map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`, peers.KeyBootstrapAgentID: "0"},
		bootstrap: "0",
	}, {
		summary: "leader without an address and no peer data: nothing written",
		view: func() peers.View {
			v := view("", "1=")
			v.Own = ""
			return v
		},
		entries: map[string]string{},
		set:     map[string]string{},
	}, {
		summary: "leader without an address chooses the lowest listed peer, numerically",
		view: func() peers.View {
			v := view("", "10=10.0.0.10", "9=10.0.0.9")
			v.Own = ""
			return v
		},
		entries:   map[string]string{"9": "10.0.0.9", "10": "10.0.0.10"},
		set:       map[string]string{peers.KeyBindAddresses: `{"10":"10.0.0.10","9":"10.0.0.9"}`, peers.KeyBootstrapAgentID: "9"},
		bootstrap: "9",
	}, {
		summary: "bootstrap-agent-id once chosen is never written again, even naming a unit gone",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","1":"10.0.0.1"}`, "1=10.0.0.1")
			v.AppData[peers.KeyBootstrapAgentID] = "7"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "1": "10.0.0.1"},
		set:     map[string]string{},
	}, {
		summary: "a new peer is added; the bootstrap id stays",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`, "1=10.0.0.1")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "1": "10.0.0.1"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0","1":"10.0.0.1"}`},
	}, {
		summary: "a peer that has not published yet is not listed",
		view:    func() peers.View { return view(`{"0":"10.0.0.0"}`, "1=") },
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{peers.KeyBootstrapAgentID: "0"},
		// The list is right; only the bootstrap id was missing.
		bootstrap: "0",
	}, {
		summary: "the departing unit is dropped although it is still in relation-list",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","1":"10.0.0.1"}`, "1=10.0.0.1")
			v.Departing = unit("1")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`},
	}, {
		summary: "a listed unit this leader has not seen join is kept",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","2":"10.0.0.2"}`)
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "2": "10.0.0.2"},
		set:     map[string]string{},
		kept:    []string{"2"},
	}, {
		summary: "a listed unit this leader saw depart in an earlier hook is dropped",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","2":"10.0.0.2"}`)
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			v.Departed = map[string]bool{"2": true}
			return v
		},
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`},
	}, {
		summary: "a listed unit in view without data (it withdrew it) is dropped, not kept",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","1":"10.0.0.1"}`, "1=")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`},
	}, {
		summary: "hostile peer data is ignored, naming the unit",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`, "1=10.0.0.1", "2=not-an-ip", "3=10.0.0.3")
			v.PeerData[unit("3")] = data("1", "10.0.0.3") // claims another unit's id
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "1": "10.0.0.1"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0","1":"10.0.0.1"}`},
		ignored: []string{unit("2"), unit("3")},
	}, {
		summary: "an agent id that is not the unit number (from configchange.socket) is listed and mapped to its unit",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`, "1=10.0.0.1")
			v.PeerData[unit("1")] = data("7", "10.0.0.1")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "7": "10.0.0.1"},
		set: map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0","7":"10.0.0.1"}`,
			peers.KeyAgentUnits: `{"7":"dqlite-controller/1"}`},
	}, {
		summary: "two units claiming one socket agent id: the lower unit is kept when neither is listed nor numbered so",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`, "1=10.0.0.1", "2=10.0.0.2")
			v.PeerData[unit("1")] = data("7", "10.0.0.1")
			v.PeerData[unit("2")] = data("7", "10.0.0.2")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "7": "10.0.0.1"},
		set: map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0","7":"10.0.0.1"}`,
			peers.KeyAgentUnits: `{"7":"dqlite-controller/1"}`},
		ignored: []string{unit("2")},
	}, {
		summary: "two units claiming one socket agent id: the one listed at its address is kept",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","7":"10.0.0.2"}`, "1=10.0.0.1", "2=10.0.0.2")
			v.PeerData[unit("1")] = data("7", "10.0.0.1")
			v.PeerData[unit("2")] = data("7", "10.0.0.2")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			v.AppData[peers.KeyAgentUnits] = `{"7":"dqlite-controller/2"}`
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "7": "10.0.0.2"},
		set:     map[string]string{},
		ignored: []string{unit("1")},
	}, {
		summary: "a departed unit with a socket agent id is dropped (its unit found through db-agent-units)",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","7":"10.0.0.2"}`)
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			v.AppData[peers.KeyAgentUnits] = `{"7":"dqlite-controller/2"}`
			v.Departed = map[string]bool{"2": true}
			return v
		},
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`, peers.KeyAgentUnits: ""},
	}, {
		summary: "an unseen unit with a socket agent id is kept with its mapping",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","7":"10.0.0.2"}`)
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			v.AppData[peers.KeyAgentUnits] = `{"7":"dqlite-controller/2"}`
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "7": "10.0.0.2"},
		set:     map[string]string{},
		kept:    []string{"7"},
	}, {
		summary: "a unit of another application is ignored",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`)
			v.Units = append(v.Units, "other/1")
			v.PeerData["other/1"] = data("1", "10.0.0.1")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{},
		ignored: []string{"other/1"},
	}, {
		summary: "two agents on one address: the one already listed stays",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","2":"10.0.0.5"}`, "1=10.0.0.5", "2=10.0.0.5")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "2": "10.0.0.5"},
		set:     map[string]string{},
		dupes:   []peers.Duplicate{{AgentID: "1", Address: "10.0.0.5", KeptAgentID: "2"}},
	}, {
		summary: "two new agents on one address: the lowest id stays",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`, "2=10.0.0.5", "1=10.0.0.5")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "1": "10.0.0.5"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0","1":"10.0.0.5"}`},
		dupes:   []peers.Duplicate{{AgentID: "2", Address: "10.0.0.5", KeptAgentID: "1"}},
	}, {
		summary: "an application list with invalid entries is rewritten with the valid ones",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","x":"10.0.0.9"}`)
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0"},
		set:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`},
	}, {
		summary: "an existing list that becomes empty is written as {}",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0"}`)
			v.Own = ""
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{},
		set:     map[string]string{peers.KeyBindAddresses: `{}`},
	}, {
		summary: "an unchanged list is not rewritten",
		view: func() peers.View {
			v := view(`{"0":"10.0.0.0","1":"10.0.0.1"}`, "1=10.0.0.1")
			v.AppData[peers.KeyBootstrapAgentID] = "0"
			return v
		},
		entries: map[string]string{"0": "10.0.0.0", "1": "10.0.0.1"},
		set:     map[string]string{},
	}}
	for _, test := range tests {
		t.Run(test.summary, func(t *testing.T) {
			v := test.view()
			before := maps.Clone(v.AppData)
			agg, err := peers.Aggregate(v)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(agg.Entries, test.entries) {
				t.Errorf("entries %v, want %v", agg.Entries, test.entries)
			}
			if !maps.Equal(agg.Set, test.set) {
				t.Errorf("set %v, want %v", agg.Set, test.set)
			}
			var ignored []string
			for _, ig := range agg.Ignored {
				if ig.Err == nil {
					t.Errorf("ignored %s without a reason", ig.Unit)
				}
				ignored = append(ignored, ig.Unit)
			}
			if !slices.Equal(ignored, test.ignored) {
				t.Errorf("ignored %v, want %v", ignored, test.ignored)
			}
			if !slices.Equal(agg.Kept, test.kept) {
				t.Errorf("kept %v, want %v", agg.Kept, test.kept)
			}
			if !slices.Equal(agg.Duplicates, test.dupes) {
				t.Errorf("duplicates %v, want %v", agg.Duplicates, test.dupes)
			}
			if agg.Bootstrap != test.bootstrap {
				t.Errorf("bootstrap %q, want %q", agg.Bootstrap, test.bootstrap)
			}
			want := maps.Clone(before)
			maps.Copy(want, test.set)
			maps.DeleteFunc(want, func(_, v string) bool { return v == "" }) // relation-set k= deletes k
			if !maps.Equal(agg.AppData, want) {
				t.Errorf("application data %v, want %v", agg.AppData, want)
			}
			if !maps.Equal(v.AppData, before) {
				t.Errorf("Aggregate changed its input: %v, was %v", v.AppData, before)
			}
		})
	}
}

// TestAggregate_BootstrapIsChosenOnce replays leaders taking turns over a
// growing relation: whoever aggregates, the first bootstrap id stays.
func TestAggregate_BootstrapIsChosenOnce(t *testing.T) {
	appData := map[string]string{}
	var chosen []string
	for _, leader := range []string{"2", "0", "1", "2"} {
		v := peers.View{App: app, AgentID: leader, Unit: unit(leader), Own: "10.0.0." + leader,
			Units: []string{unit("0"), unit("1"), unit("2")}, AppData: appData,
			PeerData: map[string]map[string]string{}}
		for _, n := range []string{"0", "1", "2"} {
			v.PeerData[unit(n)] = data(n, "10.0.0."+n)
		}
		agg, err := peers.Aggregate(v)
		if err != nil {
			t.Fatal(err)
		}
		if agg.Bootstrap != "" {
			chosen = append(chosen, agg.Bootstrap)
		}
		appData = agg.AppData
	}
	if !slices.Equal(chosen, []string{"2"}) || appData[peers.KeyBootstrapAgentID] != "2" {
		t.Fatalf("bootstrap chosen %v, application data %v; want chosen once, by the first leader", chosen, appData)
	}
}

func TestPublish(t *testing.T) {
	tests := []struct {
		summary  string
		data     map[string]string
		resolved string
		write    map[string]string
		own      string
	}{{
		summary:  "first publication",
		data:     map[string]string{},
		resolved: "10.0.0.3",
		write:    data("3", "10.0.0.3"),
		own:      "10.0.0.3",
	}, {
		summary:  "unchanged: nothing written",
		data:     data("3", "10.0.0.3"),
		resolved: "10.0.0.3",
		own:      "10.0.0.3",
	}, {
		summary:  "a new address replaces the old one",
		data:     data("3", "10.0.0.3"),
		resolved: "10.0.1.3",
		write:    data("3", "10.0.1.3"),
		own:      "10.0.1.3",
	}, {
		summary:  "a wrong agent id is corrected",
		data:     data("4", "10.0.0.3"),
		resolved: "10.0.0.3",
		write:    data("3", "10.0.0.3"),
		own:      "10.0.0.3",
	}, {
		summary: "no address resolved: the last published one is kept",
		data:    data("3", "10.0.0.3"),
		own:     "10.0.0.3",
	}, {
		summary: "no address resolved and none published",
		data:    map[string]string{},
	}, {
		summary: "no address resolved and the published one is invalid",
		data:    data("3", "10.0.0.3; rm"),
	}, {
		summary: "no address resolved and the bag names another agent",
		data:    data("4", "10.0.0.3"),
	}}
	for _, test := range tests {
		t.Run(test.summary, func(t *testing.T) {
			write, own := peers.Publish(test.data, "3", test.resolved)
			if !maps.Equal(write, test.write) || (write == nil) != (test.write == nil) || own != test.own {
				t.Errorf("Publish = %v, %q; want %v, %q", write, own, test.write, test.own)
			}
		})
	}
}

func TestEntry(t *testing.T) {
	tests := []struct {
		unit, id, addr string
		wantID, err    string
	}{
		{unit: unit("3"), id: "3", addr: "10.0.0.3", wantID: "3"},
		{unit: unit("3"), id: "3", addr: "fd00::3", wantID: "3"},
		{unit: unit("3"), id: "", addr: "10.0.0.3"},
		{unit: unit("3"), id: "3", addr: ""},
		{unit: unit("3"), id: "4", addr: "10.0.0.3", wantID: "4"}, // configchange.socket's id
		{unit: unit("3"), id: "-3", addr: "10.0.0.3", err: "not a non-negative integer"},
		{unit: unit("3"), id: "3", addr: "[fd00::3]", err: ""},
		{unit: unit("3"), id: "3", addr: "host.example", err: ""},
		{unit: "other/3", id: "3", addr: "10.0.0.3", err: "is not a unit of"},
		{unit: "dqlite-controller", id: "3", addr: "10.0.0.3", err: "is not a unit of"},
	}
	for _, test := range tests {
		id, addr, err := peers.Entry(app, test.unit, data(test.id, test.addr))
		valid := controllerconf.ValidateHost(test.addr) == nil
		switch {
		case test.err != "":
			if err == nil || !strings.Contains(err.Error(), test.err) {
				t.Errorf("Entry(%s, %q, %q): err %v, want %q", test.unit, test.id, test.addr, err, test.err)
			}
		case test.id != "" && test.addr != "" && !valid:
			if err == nil {
				t.Errorf("Entry(%s, %q, %q) accepted an invalid address", test.unit, test.id, test.addr)
			}
		case err != nil || id != test.wantID || (id != "" && addr != test.addr):
			t.Errorf("Entry(%s, %q, %q) = %q, %q, %v; want %q", test.unit, test.id, test.addr, id, addr, err, test.wantID)
		}
	}
}

func TestReadCluster(t *testing.T) {
	tests := []struct {
		summary     string
		app         map[string]string
		want        *controllerconf.Config
		listErr     bool
		badBoostrap string
	}{{
		summary: "no list yet: keep the file's",
		app:     map[string]string{},
	}, {
		summary: "a list and its bootstrap id",
		app:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`, peers.KeyBootstrapAgentID: "0"},
		want:    &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.0"}, BootstrapAgentID: "0"},
	}, {
		summary: "an empty list is a list",
		app:     map[string]string{peers.KeyBindAddresses: `{}`},
		want:    &controllerconf.Config{DBBindAddresses: map[string]string{}},
	}, {
		summary: "invalid entries are dropped and reported",
		app:     map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0","1":"nope"}`},
		want:    &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.0"}},
		listErr: true,
	}, {
		summary: "nothing usable: keep the file's rather than write an empty list",
		app:     map[string]string{peers.KeyBindAddresses: `{"x":"nope"}`},
		listErr: true,
	}, {
		summary: "not JSON: keep the file's",
		app:     map[string]string{peers.KeyBindAddresses: `[`},
		listErr: true,
	}, {
		summary:     "an invalid bootstrap id is ignored",
		app:         map[string]string{peers.KeyBindAddresses: `{"0":"10.0.0.0"}`, peers.KeyBootstrapAgentID: "0; rm"},
		want:        &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.0"}},
		badBoostrap: "0; rm",
	}}
	for _, test := range tests {
		t.Run(test.summary, func(t *testing.T) {
			got, p := peers.ReadCluster(test.app)
			switch {
			case test.want == nil && got != nil:
				t.Errorf("got %+v, want nil (keep the file's)", got)
			case test.want != nil && (got == nil || !got.Equal(test.want)):
				t.Errorf("got %+v, want %+v", got, test.want)
			}
			if (p.List != nil) != test.listErr {
				t.Errorf("list problem %v, want one: %v", p.List, test.listErr)
			}
			if p.BootstrapAgentID != test.badBoostrap {
				t.Errorf("invalid bootstrap id %q, want %q", p.BootstrapAgentID, test.badBoostrap)
			}
		})
	}
}
