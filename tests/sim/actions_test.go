package sim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newActionModel(t *testing.T) *Model {
	t.Helper()
	dir, _ := filepath.Abs("testdata/actioncharm")
	m := newToyModel(t, Options{CharmDir: dir})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	return m
}

// juju run: values are YAML, the schema's types, required and
// additionalProperties are checked before anything is queued, defaults
// are filled in; the handler runs with JUJU_DISPATCH_PATH=actions/<name>
// and the action variables (juju/juju:
// internal/worker/uniter/runner/context/context.go HookVars), action-get
// returns the parameters, action-set results nest by dotted keys
// (internal/worker/uniter/runner/jujuc/action-set.go).
func TestActions_ParamsResultsAndEnvironment(t *testing.T) {
	m := newActionModel(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, bad := range [][]string{
		{"force=yes-please", "name=x"}, // not a boolean
		{"force=true"},                 // name is required
		{"name=x", "colour=red"},       // additionalProperties: false
	} {
		if _, err := m.RunAction(ctx, "acty/0", "echo-params", bad...); err == nil || !strings.Contains(err.Error(), "validation failed") {
			t.Fatalf("juju run %v: err = %v, want a validation failure", bad, err)
		}
	}
	if _, err := m.RunAction(ctx, "acty/0", "no-such-action"); err == nil {
		t.Fatal("an undefined action was accepted")
	}
	if q := m.QueuedActions("acty/0"); len(q) != 0 {
		t.Fatalf("rejected actions were queued: %v", q)
	}
	res, err := m.RunAction(ctx, "acty/0", "echo-params", "name=x", "agent-id=7")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != ActionCompleted || res.ReturnCode != 0 {
		t.Fatalf("result:\n%s", res)
	}
	var all map[string]any
	if err := json.Unmarshal([]byte(res.Results["all"].(string)), &all); err != nil {
		t.Fatalf("action-get --format=json: %v", err)
	}
	if all["name"] != "x" || all["agent-id"] != float64(7) || all["force"] != false {
		t.Fatalf("action-get = %v, want name x, agent-id 7 (an integer), force false (the default)", all)
	}
	if res.Results["force"] != "False" {
		t.Fatalf("action-get force (smart format) = %v, want False", res.Results["force"])
	}
	if agent, _ := res.Results["agent"].(map[string]any); agent["id"] != "7" {
		t.Fatalf("dotted action-set key: results = %v", res.Results)
	}
	if len(res.Log) != 1 || res.Log[0] != "echoing" {
		t.Fatalf("action-log = %v", res.Log)
	}
	data, err := os.ReadFile(filepath.Join(m.MachineDir("acty/0"), "var-lib-juju", "acty-env"))
	if err != nil {
		t.Fatal(err)
	}
	env := string(data)
	for _, want := range []string{"JUJU_ACTION_NAME=echo-params\n", "JUJU_ACTION_UUID=" + res.ID + "\n",
		"JUJU_ACTION_TAG=action-" + res.ID + "\n", "JUJU_DISPATCH_PATH=actions/echo-params\n", "JUJU_HOOK_NAME=\n"} {
		if !strings.Contains(env, want) {
			t.Fatalf("action environment lacks %q:\n%s", want, env)
		}
	}
}

// action-fail fails the action with its message but the handler exited 0,
// so its relation data is committed; a non-zero exit fails it with "exit
// status N" and commits nothing (juju/juju:
// internal/worker/uniter/runner/context/context.go Flush, finalizeAction).
func TestActions_FailureAndCommit(t *testing.T) {
	m := newActionModel(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := m.RunAction(ctx, "acty/0", "fail-softly")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != ActionFailed || res.Message != "no quorum: run recover-from-quorum-loss" {
		t.Fatalf("action-fail result:\n%s", res)
	}
	if got := m.RelationData("db-cluster")["acty/0"]["soft"]; got != "written" {
		t.Fatalf("relation data of an action that called action-fail and exited 0: soft = %q, want it committed", got)
	}
	res, err = m.RunAction(ctx, "acty/0", "fail-hard")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != ActionFailed || res.Message != "exit status 3" || res.ReturnCode != 3 || !strings.Contains(res.Stderr, "failing hard") {
		t.Fatalf("exit 3 result:\n%s\nstderr %q", res, res.Stderr)
	}
	if got := m.RelationData("db-cluster")["acty/0"]["hard"]; got != "" {
		t.Fatalf("relation data of an action that exited 3 was committed: %q", got)
	}
}

// The uniter's resolver asks the actions resolver before looking at a
// failed or queued hook (juju/juju: internal/worker/uniter/resolver.go
// nextOp), so an action runs while a hook is in error, and the unit stays in
// error afterwards.
func TestActions_RunWhileAHookIsInError(t *testing.T) {
	m := newActionModel(t)
	if err := m.SetConfig(map[string]string{"fail-config": "true"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.WaitFor(ctx, "config-changed in error", func(st Status) bool {
		return len(st.Units) == 1 && st.Units[0].Workload == "error"
	}); err != nil {
		t.Fatal(err)
	}
	res, err := m.RunAction(ctx, "acty/0", "echo-params", "name=during-error")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != ActionCompleted {
		t.Fatalf("action during a hook error:\n%s", res)
	}
	if st := m.Status(); st.Units[0].Workload != "error" {
		t.Fatalf("after the action the unit is %s, want it still in error", st.Units[0].Workload)
	}
}
