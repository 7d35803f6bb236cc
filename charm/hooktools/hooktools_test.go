package hooktools_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/charm/hooktools"
)

// fixture reads a copy of a Juju hook-tool output sample (testdata/SOURCES.md).
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// replay answers one expected command line with fixed bytes, like the tool
// would: stdout on success, or an *ExitError with the fixture as stderr.
type replay struct {
	t        *testing.T
	wantCmd  string
	stdout   []byte
	stderr   []byte
	exitCode int
	calls    int
}

func (r *replay) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.calls++
	got := strings.Join(append([]string{name}, args...), " ")
	if got != r.wantCmd {
		r.t.Errorf("command = %q, want %q", got, r.wantCmd)
	}
	if r.exitCode != 0 {
		return nil, &hooktools.ExitError{
			Name:   name,
			Code:   r.exitCode,
			Stderr: strings.TrimSpace(string(r.stderr)),
			Err:    fmt.Errorf("exit status %d", r.exitCode),
		}
	}
	return r.stdout, nil
}

func TestNetworkGet_SingleNICLXD(t *testing.T) {
	r := &replay{t: t, wantCmd: "network-get db-cluster -r db-cluster:0 --format=json",
		stdout: fixture(t, "network-get-json-single-nic-ipv4-lxd-2.9.txt")}
	n, err := hooktools.New(r).NetworkGet(context.Background(), "db-cluster", "db-cluster:0")
	if err != nil {
		t.Fatal(err)
	}
	want := &hooktools.Network{
		BindAddresses: []hooktools.Device{{
			MACAddress: "00:16:3e:95:00:2d", InterfaceName: "eth0",
			Addresses: []hooktools.DeviceAddress{{Value: "10.161.87.143", CIDR: "10.161.87.0/24"}},
		}},
		EgressSubnets:    []string{"10.161.87.143/32"},
		IngressAddresses: []string{"10.161.87.143"},
	}
	if !reflect.DeepEqual(n, want) {
		t.Fatalf("got %+v, want %+v", n, want)
	}
}

func TestNetworkGet_WithoutRelationID(t *testing.T) {
	r := &replay{t: t, wantCmd: "network-get db-cluster --format=json",
		stdout: fixture(t, "network-get-json-multi-nic-fan-3.6-apitest.txt")}
	n, err := hooktools.New(r).NetworkGet(context.Background(), "db-cluster", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"8.8.4.10", "8.8.4.11", "8.8.8.10", "240.1.1.10"}; !reflect.DeepEqual(n.IngressAddresses, want) {
		t.Fatalf("ingress = %v, want %v", n.IngressAddresses, want)
	}
	if len(n.BindAddresses) != 3 || n.BindAddresses[2].InterfaceName != "fan-1" {
		t.Fatalf("bind addresses = %+v", n.BindAddresses)
	}
}

func TestNetworkGet_OmittedListsAreEmpty(t *testing.T) {
	for _, tc := range []struct {
		fixture               string
		wantBind, wantIngress int
	}{
		{"network-get-json-ipv6-test.txt", 1, 0},
		{"network-get-json-multi-nic-test.txt", 2, 0},
		{"network-get-json-ingress-egress-only-test.txt", 0, 1},
		{"network-get-json-k8s-4.1dev.txt", 1, 1},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			r := &replay{t: t, wantCmd: "network-get db-cluster --format=json", stdout: fixture(t, tc.fixture)}
			n, err := hooktools.New(r).NetworkGet(context.Background(), "db-cluster", "")
			if err != nil {
				t.Fatal(err)
			}
			if len(n.BindAddresses) != tc.wantBind || len(n.IngressAddresses) != tc.wantIngress {
				t.Fatalf("got %d devices and %d ingress addresses, want %d and %d",
					len(n.BindAddresses), len(n.IngressAddresses), tc.wantBind, tc.wantIngress)
			}
		})
	}
}

func TestNetworkGet_UnknownBindingErrorCarriesStderr(t *testing.T) {
	r := &replay{t: t, wantCmd: "network-get unknown --format=json",
		stderr: fixture(t, "network-get-error-unknown-binding.txt"), exitCode: 1}
	_, err := hooktools.New(r).NetworkGet(context.Background(), "unknown", "")
	if err == nil || !strings.Contains(err.Error(), `no network config found for binding "unknown"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestRelationGet_UnitBag(t *testing.T) {
	r := &replay{t: t, wantCmd: "relation-get -r db:0 --format=json - mysql/1",
		stdout: fixture(t, "relation-get-json-all-unit-cmr.txt")}
	bag, err := hooktools.New(r).RelationGet(context.Background(), "db:0", "mysql/1")
	if err != nil {
		t.Fatal(err)
	}
	if bag["slave"] != "False" || bag["ingress-address"] != "54.237.63.211" || len(bag) != 8 {
		t.Fatalf("bag = %v", bag)
	}
}

func TestRelationGet_MultilineValue(t *testing.T) {
	r := &replay{t: t, wantCmd: "relation-get -r r:1 --format=json - m/0",
		stdout: fixture(t, "relation-get-json-all-unit-multiline-test.txt")}
	bag, err := hooktools.New(r).RelationGet(context.Background(), "r:1", "m/0")
	if err != nil {
		t.Fatal(err)
	}
	if bag["pew"] != "pew\npew\n" {
		t.Fatalf("bag = %q", bag)
	}
}

func TestRelationGetApp_BagAndEmptyBag(t *testing.T) {
	r := &replay{t: t, wantCmd: "relation-get -r db:2 --app --format=json - mysql",
		stdout: fixture(t, "relation-get-json-app.txt")}
	bag, err := hooktools.New(r).RelationGetApp(context.Background(), "db:2", "mysql")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(bag, map[string]string{"answer-to-the-ultimate-question": "42"}) {
		t.Fatalf("bag = %v", bag)
	}
	r = &replay{t: t, wantCmd: "relation-get -r db:2 --app --format=json - wordpress",
		stdout: fixture(t, "relation-get-json-app-empty.txt")}
	bag, err = hooktools.New(r).RelationGetApp(context.Background(), "db:2", "wordpress")
	if err != nil || bag == nil || len(bag) != 0 {
		t.Fatalf("bag = %v, err = %v", bag, err)
	}
}

func TestRelationGet_NullIsEmptyBag(t *testing.T) {
	r := &replay{t: t, wantCmd: "relation-get -r x:0 --format=json - u/1",
		stdout: fixture(t, "relation-get-key-json-missing-test.txt")}
	bag, err := hooktools.New(r).RelationGet(context.Background(), "x:0", "u/1")
	if err != nil || bag == nil || len(bag) != 0 {
		t.Fatalf("bag = %v, err = %v", bag, err)
	}
}

func TestRelationGet_ErrorsCarryStderr(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		code    int
		want    string
	}{
		{"relation-get-error-permission-denied.txt", 1, "cannot run relation-get: exit status 1: ERROR permission denied"},
		{"relation-get-error-unknown-relation-test.txt", 2, `cannot run relation-get: exit status 2: ERROR invalid value "burble:123" for option -r: relation not found`},
	} {
		r := &replay{t: t, wantCmd: "relation-get -r burble:123 --app --format=json - slurmdbd",
			stderr: fixture(t, tc.fixture), exitCode: tc.code}
		_, err := hooktools.New(r).RelationGetApp(context.Background(), "burble:123", "slurmdbd")
		if err == nil || err.Error() != tc.want {
			t.Fatalf("err = %v, want %s", err, tc.want)
		}
		var exitErr *hooktools.ExitError
		if !errors.As(err, &exitErr) || exitErr.Code != tc.code {
			t.Fatalf("err %v is not an ExitError with code %d", err, tc.code)
		}
	}
}

func TestRelationSet_SortedKeyValueArgs(t *testing.T) {
	r := &replay{t: t, wantCmd: `relation-set -r db-cluster:3 --app bootstrap-agent-id=0 db-bind-addresses={"0":"fd00::1"}`}
	err := hooktools.New(r).RelationSet(context.Background(), "db-cluster:3", true, map[string]string{
		"db-bind-addresses":  `{"0":"fd00::1"}`,
		"bootstrap-agent-id": "0",
	})
	if err != nil || r.calls != 1 {
		t.Fatalf("err = %v, calls = %d", err, r.calls)
	}
}

func TestRelationSet_NonLeaderAppWriteFails(t *testing.T) {
	r := &replay{t: t, wantCmd: "relation-set -r p:0 --app k=v",
		stderr: fixture(t, "relation-set-error-app-non-leader.txt"), exitCode: 1}
	err := hooktools.New(r).RelationSet(context.Background(), "p:0", true, map[string]string{"k": "v"})
	if err == nil || !strings.Contains(err.Error(), "ERROR cannot write relation settings") {
		t.Fatalf("err = %v", err)
	}
}

func TestRelationSet_RefusesBadKeyAndSkipsEmpty(t *testing.T) {
	r := &replay{t: t}
	c := hooktools.New(r)
	if err := c.RelationSet(context.Background(), "p:0", false, map[string]string{"a=b": "c"}); err == nil {
		t.Fatal("key with = accepted")
	}
	if err := c.RelationSet(context.Background(), "p:0", false, nil); err != nil {
		t.Fatal(err)
	}
	if r.calls != 0 {
		t.Fatalf("relation-set ran %d times", r.calls)
	}
}

func TestRelationListAndIDs(t *testing.T) {
	r := &replay{t: t, wantCmd: "relation-list -r x:0 --format=json", stdout: fixture(t, "relation-list-json-several-test.txt")}
	units, err := hooktools.New(r).RelationList(context.Background(), "x:0")
	if err != nil || !reflect.DeepEqual(units, []string{"bar", "baz", "foo"}) {
		t.Fatalf("units = %v, err = %v", units, err)
	}
	r = &replay{t: t, wantCmd: "relation-list -r x:0 --format=json", stdout: fixture(t, "relation-list-json-empty-test.txt")}
	units, err = hooktools.New(r).RelationList(context.Background(), "x:0")
	if err != nil || len(units) != 0 {
		t.Fatalf("units = %v, err = %v", units, err)
	}
	r = &replay{t: t, wantCmd: "relation-ids x --format=json", stdout: fixture(t, "relation-ids-json-test.txt")}
	ids, err := hooktools.New(r).RelationIDs(context.Background(), "x")
	if err != nil || !reflect.DeepEqual(ids, []string{"x:0", "x:1", "x:2"}) {
		t.Fatalf("ids = %v, err = %v", ids, err)
	}
	r = &replay{t: t, wantCmd: "relation-ids z --format=json", stdout: fixture(t, "relation-ids-json-empty-test.txt")}
	ids, err = hooktools.New(r).RelationIDs(context.Background(), "z")
	if err != nil || len(ids) != 0 {
		t.Fatalf("ids = %v, err = %v", ids, err)
	}
}

func TestIsLeader(t *testing.T) {
	for fix, want := range map[string]bool{"is-leader-json-true.txt": true, "is-leader-json-false.txt": false} {
		r := &replay{t: t, wantCmd: "is-leader --format=json", stdout: fixture(t, fix)}
		got, err := hooktools.New(r).IsLeader(context.Background())
		if err != nil || got != want {
			t.Fatalf("%s: got %v, %v", fix, got, err)
		}
	}
}

func TestConfigGet_NumbersStayExact(t *testing.T) {
	r := &replay{t: t, wantCmd: "config-get --format=json", stdout: fixture(t, "config-get-json-all.txt")}
	cfg, err := hooktools.New(r).ConfigGet(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cfg["spline-reticulation"] != json.Number("45") {
		t.Fatalf("spline-reticulation = %#v", cfg["spline-reticulation"])
	}
	if cfg["monsters"] != false || cfg["title"] != "My Title" {
		t.Fatalf("cfg = %v", cfg)
	}
}

func TestUnitGet(t *testing.T) {
	r := &replay{t: t, wantCmd: "unit-get private-address --format=json", stdout: fixture(t, "unit-get-private-address-json-test.txt")}
	addr, err := hooktools.New(r).UnitGet(context.Background(), "private-address")
	if err != nil || addr != "192.168.0.99" {
		t.Fatalf("addr = %q, err = %v", addr, err)
	}
}

func TestStatusSet_MessageAfterDoubleDash(t *testing.T) {
	r := &replay{t: t, wantCmd: "status-set blocked -- -starts with a dash"}
	if err := hooktools.New(r).StatusSet(context.Background(), hooktools.StatusBlocked, "-starts with a dash"); err != nil {
		t.Fatal(err)
	}
	r = &replay{t: t, wantCmd: "application-version-set -- 1.2.3"}
	if err := hooktools.New(r).ApplicationVersionSet(context.Background(), "1.2.3"); err != nil {
		t.Fatal(err)
	}
}

func TestLogHandler_LevelsAndAttrs(t *testing.T) {
	r := &replay{t: t, wantCmd: "juju-log --log-level WARNING -- ignoring peer data unit=app/3 reason=bad"}
	var fallback bytes.Buffer
	log := slog.New(hooktools.NewLogHandler(hooktools.New(r), slog.LevelInfo, &fallback))
	log.Debug("not sent")
	log.Warn("ignoring peer data", "unit", "app/3", "reason", "bad")
	if r.calls != 1 || fallback.Len() != 0 {
		t.Fatalf("calls = %d, fallback = %q", r.calls, fallback.String())
	}
}

func TestLogHandler_FallsBackWhenJujuLogFails(t *testing.T) {
	r := &replay{t: t, wantCmd: "juju-log --log-level ERROR -- boom", exitCode: 1, stderr: []byte("ERROR no context")}
	var fallback bytes.Buffer
	slog.New(hooktools.NewLogHandler(hooktools.New(r), slog.LevelInfo, &fallback)).Error("boom")
	if !strings.Contains(fallback.String(), "boom") || !strings.Contains(fallback.String(), "ERROR no context") {
		t.Fatalf("fallback = %q", fallback.String())
	}
}

// TestExecRunner_RealToolFailureCarriesStderr runs a real executable found
// on PATH (a stand-in relation-get) to check exit code and stderr handling.
func TestExecRunner_RealToolFailureCarriesStderr(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho partial\necho 'ERROR permission denied' >&2\nexit 2\n"
	if err := os.WriteFile(filepath.Join(dir, "relation-get"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	_, err := hooktools.New(hooktools.ExecRunner{}).RelationGet(context.Background(), "p:0", "a/0")
	if err == nil || err.Error() != "cannot run relation-get: exit status 2: ERROR permission denied" {
		t.Fatalf("err = %v", err)
	}
	var exitErr *hooktools.ExitError
	if !errors.As(err, &exitErr) || exitErr.Code != 2 || string(exitErr.Stdout) != "partial\n" {
		t.Fatalf("err = %#v", err)
	}
}

func TestExecRunner_ArgumentsAreNotShellInterpreted(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "args")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + out + "\n"
	if err := os.WriteFile(filepath.Join(dir, "juju-log"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	msg := "$(touch " + filepath.Join(dir, "pwned") + "); `id`"
	if err := hooktools.New(hooktools.ExecRunner{}).Log(context.Background(), hooktools.LevelInfo, msg); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "--log-level\nINFO\n--\n"+msg+"\n" {
		t.Fatalf("args = %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Fatal("message was run by a shell")
	}
}

func TestExecRunner_MissingToolIsAnError(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := hooktools.New(hooktools.ExecRunner{}).IsLeader(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot run is-leader") {
		t.Fatalf("err = %v", err)
	}
}
