package controllerconf_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
)

func TestParse_JujuCharmOutput(t *testing.T) {
	// What Juju 4's Python charm writes with yaml.dump (juju/juju-controller: src/charm.py).
	data := []byte("db-bind-addresses:\n  '0': 10.6.6.6\n  '1': 10.6.6.7\n")
	c, err := controllerconf.Parse(data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := map[string]string{"0": "10.6.6.6", "1": "10.6.6.7"}
	if len(c.DBBindAddresses) != 2 || c.DBBindAddresses["0"] != want["0"] || c.DBBindAddresses["1"] != want["1"] {
		t.Fatalf("got %v, want %v", c.DBBindAddresses, want)
	}
	if c.BootstrapAgentID != "" {
		t.Fatalf("bootstrap id = %q, want empty", c.BootstrapAgentID)
	}
}

func TestParse_EmptyFileIsEmptyConfig(t *testing.T) {
	for _, data := range []string{"", "\n", "   \n\t\n"} {
		c, err := controllerconf.Parse([]byte(data))
		if err != nil {
			t.Fatalf("Parse(%q): %v", data, err)
		}
		if len(c.DBBindAddresses) != 0 {
			t.Fatalf("Parse(%q) = %v, want empty", data, c.DBBindAddresses)
		}
	}
}

func TestParse_RejectsMalformed(t *testing.T) {
	cases := []struct {
		name, data, wantErr string
	}{
		{"not yaml", "db-bind-addresses: [", "cannot parse"},
		{"list instead of map", "db-bind-addresses:\n- 10.0.0.1\n", "cannot parse"},
		{"path in agent id", "db-bind-addresses:\n  '../../etc': 10.0.0.1\n", "not a non-negative integer"},
		{"negative agent id", "db-bind-addresses:\n  '-1': 10.0.0.1\n", "not a non-negative integer"},
		{"leading zero", "db-bind-addresses:\n  '01': 10.0.0.1\n", "leading zero"},
		{"host name", "db-bind-addresses:\n  '0': controller-0.local\n", "not an IP literal"},
		{"address with port", "db-bind-addresses:\n  '0': 10.0.0.1:17666\n", "not an IP literal"},
		{"shell metacharacter", "db-bind-addresses:\n  '0': 10.0.0.1;reboot\n", "not an IP literal"},
		{"bracketed ipv6", "db-bind-addresses:\n  '0': '[fd00::1]'\n", "not an IP literal"},
		{"unspecified", "db-bind-addresses:\n  '0': 0.0.0.0\n", "cannot be bound"},
		{"non-canonical ipv6", "db-bind-addresses:\n  '0': 'FD00:0::1'\n", "canonical"},
		{"bad bootstrap id", "db-bind-addresses: {}\nbootstrap-agent-id: x\n", "bootstrap-agent-id"},
		{"bad api host", "db-bind-addresses: {}\napi-hosts: [10.0.0.1, 'x; rm']\n", "api-hosts"},
		{"bad api agent host", "db-bind-addresses: {}\napi-agent-hosts: ['127.0.0.1:17070']\n", "api-agent-hosts"},
		{"two documents", "db-bind-addresses: {}\n---\ndb-bind-addresses: {}\n", "more than one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := controllerconf.Parse([]byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse(%q) error = %v, want one containing %q", tc.data, err, tc.wantErr)
			}
		})
	}
}

func TestMarshal_CanonicalAndRoundTrips(t *testing.T) {
	c := &controllerconf.Config{
		DBBindAddresses:  map[string]string{"10": "10.0.0.10", "2": "fd00::2", "0": "10.0.0.1"},
		BootstrapAgentID: "0",
		APIHosts:         []string{"10.0.0.1", "203.0.113.5"},
		APIAgentHosts:    []string{"10.0.0.1"},
	}
	data, err := controllerconf.Marshal(c)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	want := "db-bind-addresses:\n  '0': 10.0.0.1\n  '2': fd00::2\n  '10': 10.0.0.10\nbootstrap-agent-id: '0'\n" +
		"api-hosts:\n  - 10.0.0.1\n  - 203.0.113.5\napi-agent-hosts:\n  - 10.0.0.1\n"
	if string(data) != want {
		t.Fatalf("Marshal =\n%s\nwant\n%s", data, want)
	}
	back, err := controllerconf.Parse(data)
	if err != nil {
		t.Fatalf("Parse(Marshal): %v", err)
	}
	if !back.Equal(c) {
		t.Fatalf("round trip = %+v, want %+v", back, c)
	}
}

func TestWrite_UnchangedContentIsNotRewritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controller-0", controllerconf.FileName)
	c := &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.1"}}
	changed, err := controllerconf.Write(path, c)
	if err != nil || !changed {
		t.Fatalf("first Write = %v, %v; want true, nil", changed, err)
	}
	st1, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st1.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st1.Mode().Perm())
	}
	changed, err = controllerconf.Write(path, &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.1"}})
	if err != nil || changed {
		t.Fatalf("second Write = %v, %v; want false, nil", changed, err)
	}
	st2, _ := os.Stat(path)
	if !os.SameFile(st1, st2) {
		t.Fatal("file was replaced although its content did not change")
	}
	c.DBBindAddresses["1"] = "10.0.0.2"
	changed, err = controllerconf.Write(path, c)
	if err != nil || !changed {
		t.Fatalf("third Write = %v, %v; want true, nil", changed, err)
	}
}

func TestWrite_InvalidConfigLeavesFileAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), controllerconf.FileName)
	good := &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.1"}}
	if _, err := controllerconf.Write(path, good); err != nil {
		t.Fatal(err)
	}
	bad := &controllerconf.Config{DBBindAddresses: map[string]string{"0": "not-an-ip"}}
	if _, err := controllerconf.Write(path, bad); err == nil {
		t.Fatal("Write of an invalid config succeeded")
	}
	got, err := controllerconf.Read(path)
	if err != nil || !got.Equal(good) {
		t.Fatalf("after failed write: %+v, %v; want the good config", got, err)
	}
}

func TestRead_MissingFileIsNotExist(t *testing.T) {
	_, err := controllerconf.Read(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Read of missing file: %v, want fs.ErrNotExist", err)
	}
}

// writerEnv makes the test binary act as a process that rewrites the config
// file in a loop, so the test can kill it at arbitrary points.
const writerEnv = "CONTROLLERCONF_TEST_WRITER"

func TestMain(m *testing.M) {
	if path := os.Getenv(writerEnv); path != "" {
		configs := writerConfigs()
		for i := 0; ; i++ {
			if _, err := controllerconf.Write(path, configs[i%2]); err != nil {
				os.Exit(3)
			}
		}
	}
	os.Exit(m.Run())
}

func writerConfigs() []*controllerconf.Config {
	small := &controllerconf.Config{DBBindAddresses: map[string]string{"0": "10.0.0.1"}}
	big := &controllerconf.Config{DBBindAddresses: map[string]string{}, BootstrapAgentID: "0"}
	for i := 0; i < 200; i++ {
		big.DBBindAddresses[strconv.Itoa(i)] = "10.0.1." + strconv.Itoa(i+1)
	}
	return []*controllerconf.Config{small, big}
}

func TestWriteFileAtomic_KilledWriterLeavesOldOrNewFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, controllerconf.FileName)
	configs := writerConfigs()
	for round := 0; round < 20; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), writerEnv+"="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(5+round*3) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // killed before the first rename
		}
		if err != nil {
			t.Fatal(err)
		}
		got, err := controllerconf.Parse(data)
		if err != nil {
			t.Fatalf("round %d: file is torn: %v\n%s", round, err, data)
		}
		if !got.Equal(configs[0]) && !got.Equal(configs[1]) {
			t.Fatalf("round %d: file holds neither config: %+v", round, got)
		}
	}
	// Temporary files of killed writers may remain; they must never be
	// mistaken for the config itself.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != controllerconf.FileName && !controllerconf.IsTempName(e.Name()) {
			t.Fatalf("unexpected file %q", e.Name())
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("db-bind-addresses:\n  '0': 10.6.6.6\n  '1': 10.6.6.7\n"))
	f.Add([]byte("db-bind-addresses:\n  '0': fd00::1\nbootstrap-agent-id: '0'\n"))
	f.Add([]byte("db-bind-addresses: {}\napi-hosts: [10.0.0.1]\napi-agent-hosts: []\n"))
	f.Add([]byte(""))
	f.Add([]byte("db-bind-addresses: [1, 2]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := controllerconf.Parse(data)
		if err != nil {
			return
		}
		// Whatever parses must be valid and survive a canonical round trip.
		out, err := controllerconf.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal of a parsed config: %v", err)
		}
		back, err := controllerconf.Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(c)): %v\n%s", err, out)
		}
		if !back.Equal(c) {
			t.Fatalf("round trip changed the config: %+v != %+v", back, c)
		}
		again, _ := controllerconf.Marshal(back)
		if !bytes.Equal(out, again) {
			t.Fatalf("Marshal is not canonical:\n%s\n%s", out, again)
		}
	})
}

// Agent ids sort as numbers ("10" after "9"), which is what makes "the
// lowest id" the bootstrap choice and the order of every listing.
func TestSortedAgentIDs_Numeric(t *testing.T) {
	got := controllerconf.SortedAgentIDs(map[string]string{"10": "", "9": "", "0": "", "100": "", "2": ""})
	if want := []string{"0", "2", "9", "10", "100"}; !slices.Equal(got, want) {
		t.Fatalf("SortedAgentIDs = %v, want %v", got, want)
	}
	if controllerconf.CompareAgentIDs("9", "10") >= 0 || controllerconf.CompareAgentIDs("10", "10") != 0 {
		t.Fatal("CompareAgentIDs does not order numerically")
	}
}
