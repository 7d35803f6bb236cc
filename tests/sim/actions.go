package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	yamlv2 "gopkg.in/yaml.v2"
)

// Juju's action machinery, as `juju run <unit> <action> key=value ...` drives
// it (juju/juju: cmd/juju/action/run.go, internal/worker/uniter/actions/,
// internal/worker/uniter/operation/runaction.go,
// internal/worker/uniter/runner/context/context.go,
// internal/worker/uniter/runner/jujuc/action-{get,set,fail,log}.go):
//
//   - the client parses every value as YAML ("force=true" is a boolean,
//     "agent-id=3" an integer), validates the parameters against the
//     action's schema in actions.yaml (types, required, additionalProperties)
//     and fills in the schema's defaults before the action is queued; a
//     parameter error fails `juju run` and queues nothing;
//   - the unit agent runs a queued action as soon as it is between
//     operations: the uniter's resolver asks the actions resolver before
//     any queued or failed hook (internal/worker/uniter/resolver.go), so an
//     action runs ahead of queued hooks and while a hook is in error, but
//     after a due secret hook (the secrets resolver comes first); one
//     operation at a time per unit, as for hooks;
//   - the handler is <charm>/dispatch with JUJU_DISPATCH_PATH=actions/<name>
//     (else <charm>/actions/<name>), JUJU_ACTION_NAME, JUJU_ACTION_UUID and
//     JUJU_ACTION_TAG set, JUJU_HOOK_NAME empty, and the agent status
//     "executing" with "running action <name>";
//   - action-set keys must match Juju's rule and not be reserved; dotted
//     keys nest; every value is a string; action-fail marks the action
//     failed with its message (default "action failed without reason given,
//     check action for errors") and the action runs on; a non-zero exit
//     fails it with "exit status N", which wins over action-fail's message;
//   - relation data and secret changes made during the action are
//     committed only when the handler exits 0 (HookContext.Flush),
//     action-fail or not, and application data only from the leader;
//   - the task records stdout, stderr and the return code besides the
//     results the charm set (Juju reports them as stdout, stderr and
//     return-code).

// ActionStatus values as `juju show-task` prints them.
const (
	ActionCompleted = "completed"
	ActionFailed    = "failed"
)

// ActionResult is one finished task.
type ActionResult struct {
	ID      string
	Unit    string
	Action  string
	Params  map[string]any
	Status  string
	Message string
	// Results are what the charm set with action-set (nested by dotted
	// keys, values strings).
	Results    map[string]any
	Log        []string
	Stdout     string
	Stderr     string
	ReturnCode int
	// Started is when the unit agent started the handler.
	Started time.Time
}

// String renders the task like `juju show-task` (YAML).
func (r *ActionResult) String() string {
	out := map[string]any{"id": r.ID, "status": r.Status}
	if r.Message != "" {
		out["message"] = r.Message
	}
	if len(r.Results) > 0 {
		out["results"] = r.Results
	}
	if len(r.Log) > 0 {
		out["log"] = r.Log
	}
	data, _ := yamlv2.Marshal(out)
	return string(data)
}

type actionRun struct {
	res  ActionResult
	done chan struct{}
}

// actionState is the model's action bookkeeping.
type actionState struct {
	seq     int
	queued  map[string][]*actionRun // by unit
	running map[string]*actionRun   // by context id
}

type actionSpec struct {
	Description string         `yaml:"description"`
	Params      map[string]any `yaml:"params"`
	Required    []string       `yaml:"required"`
	Additional  *bool          `yaml:"additionalProperties"`
}

// RunAction is `juju run <unit> <action> key=value ...`: it validates the
// parameters, queues the action on the unit and waits for it to finish (or
// ctx). A parameter error returns an error and queues nothing; a failed
// action is a result with Status "failed", not an error.
func (m *Model) RunAction(ctx context.Context, unitName, action string, args ...string) (*ActionResult, error) {
	specs, err := m.actionSpecs()
	if err != nil {
		return nil, err
	}
	spec, ok := specs[action]
	if !ok {
		return nil, fmt.Errorf("cannot run action %q on %s: the charm defines no such action", action, unitName)
	}
	params, err := parseActionArgs(args)
	if err != nil {
		return nil, err
	}
	if err := validateActionParams(spec, params); err != nil {
		return nil, fmt.Errorf("validation failed: %w", err)
	}
	m.mu.Lock()
	u := m.units[unitName]
	if u == nil || u.life == lifeDead {
		m.mu.Unlock()
		return nil, fmt.Errorf("unit %q not found", unitName)
	}
	if m.acts.queued == nil {
		m.acts.queued, m.acts.running = map[string][]*actionRun{}, map[string]*actionRun{}
	}
	m.acts.seq++
	run := &actionRun{
		res:  ActionResult{ID: fmt.Sprint(m.acts.seq), Unit: unitName, Action: action, Params: params},
		done: make(chan struct{}),
	}
	m.acts.queued[unitName] = append(m.acts.queued[unitName], run)
	m.notifyLocked()
	m.mu.Unlock()
	select {
	case <-run.done:
		return &run.res, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("cannot wait for action %s %s on %s: %w", run.res.ID, action, unitName, ctx.Err())
	case <-m.closing:
		return nil, errors.New("cannot wait for the action: the model is closing")
	}
}

func (m *Model) actionSpecs() (map[string]actionSpec, error) {
	data, err := os.ReadFile(filepath.Join(m.opts.CharmDir, "actions.yaml"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]actionSpec{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read actions.yaml: %w", err)
	}
	specs := map[string]actionSpec{}
	if err := yamlv2.Unmarshal(data, &specs); err != nil {
		return nil, fmt.Errorf("cannot parse actions.yaml: %w", err)
	}
	return specs, nil
}

// parseActionArgs parses key=value arguments as `juju run` does: each value
// is YAML, dotted keys nest.
func parseActionArgs(args []string) (map[string]any, error) {
	params := map[string]any{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("argument %q must be of the form key...=value", a)
		}
		var val any
		if err := yamlv2.Unmarshal([]byte(v), &val); err != nil {
			return nil, fmt.Errorf("cannot parse the value of %q: %w", k, err)
		}
		if val == nil {
			val = v
		}
		keys := strings.Split(k, ".")
		bag := params
		for _, key := range keys[:len(keys)-1] {
			next, ok := bag[key].(map[string]any)
			if !ok {
				next = map[string]any{}
				bag[key] = next
			}
			bag = next
		}
		bag[keys[len(keys)-1]] = val
	}
	return params, nil
}

// validateActionParams checks the JSON-schema subset actions.yaml uses
// (type, required, additionalProperties) and inserts defaults.
func validateActionParams(spec actionSpec, params map[string]any) error {
	for name, v := range params {
		raw, ok := spec.Params[name]
		if !ok {
			if spec.Additional != nil && !*spec.Additional {
				return fmt.Errorf("(root) : additional property %q is not allowed", name)
			}
			continue
		}
		ps, _ := raw.(map[any]any)
		if t, _ := ps["type"].(string); t != "" && !hasJSONType(v, t) {
			return fmt.Errorf("%s : must be of type %s, given %v", name, t, v)
		}
	}
	for _, name := range spec.Required {
		if _, ok := params[name]; !ok {
			return fmt.Errorf("(root) : %q property is missing and required", name)
		}
	}
	for name, raw := range spec.Params {
		ps, _ := raw.(map[any]any)
		if def, ok := ps["default"]; ok {
			if _, set := params[name]; !set {
				params[name] = def
			}
		}
	}
	return nil
}

func hasJSONType(v any, t string) bool {
	switch t {
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "integer":
		switch v.(type) {
		case int, int64, uint64:
			return true
		}
		return false
	case "number":
		switch v.(type) {
		case int, int64, uint64, float64:
			return true
		}
		return false
	case "object":
		switch v.(type) {
		case map[string]any, map[any]any:
			return true
		}
		return false
	case "array":
		_, ok := v.([]any)
		return ok
	}
	return true
}

// runQueuedActionLocked runs the unit's next queued action, if any, the way
// the uniter's resolver does: after install, a pending leader-elected and
// a due secret hook (the "secrets" badge comes before "actions" in
// juju/juju internal/worker/uniter/resolver.go NextOp; the secrets
// resolver acts only with no failed hook and an alive unit, see
// secrethooks.go), before any other hook, also while a hook is in error.
// It is called with m.mu held and returns with it held; it reports
// whether it ran one.
func (m *Model) runQueuedActionLocked(u *unit) bool {
	q := m.acts.queued[u.name]
	if len(q) == 0 || !u.installed || u.leaderElectedPending && m.leader == u.name {
		return false
	}
	if u.failed == nil && u.interrupted == nil && u.life == lifeAlive && m.nextSecretHookLocked(u) != nil {
		return false // the hook path runs the secret hook first
	}
	run := q[0]
	m.acts.queued[u.name] = q[1:]
	run.res.Started = time.Now()
	h := &hookInfo{name: run.res.Action}
	hc := m.newContextLocked(u, h)
	m.acts.running[hc.id] = run
	u.running = true
	savedAgent := [2]string{u.agent, u.agentMsg}
	u.agent, u.agentMsg = "executing", "running action "+run.res.Action
	m.notifyLocked()
	m.mu.Unlock()

	code, stdout, stderr, runErr := m.runActionHandler(u, hc, run)

	m.mu.Lock()
	delete(m.contexts, hc.id)
	delete(m.acts.running, hc.id)
	u.running = false
	if u.agent == "executing" {
		u.agent, u.agentMsg = savedAgent[0], savedAgent[1]
	}
	res := &run.res
	res.Stdout, res.Stderr, res.ReturnCode = stdout, stderr, code
	switch {
	case m.closed || u.machine.dead:
		res.Status, res.Message = ActionFailed, "the unit agent died while the action ran"
	case runErr != nil:
		res.Status, res.Message = ActionFailed, runErr.Error()
	default:
		// Like a hook's: relation data and secret changes commit together,
		// application data only from the leader.
		if msg := m.checkCommitLocked(u, hc); msg != "" {
			res.Status, res.Message = ActionFailed, msg
			break
		}
		m.commitLocked(u, h, hc)
		m.commitSecretsLocked(hc)
		m.commitPortsLocked(hc)
		if res.Status == "" {
			res.Status = ActionCompleted
		}
	}
	m.discardSecretsLocked(hc)
	m.appendUnitLog(u, fmt.Sprintf("action %s %s %s: %s", res.ID, res.Action, res.Status, res.Message))
	close(run.done)
	m.notifyLocked()
	return true
}

// runActionHandler runs the charm's handler for an action inside the
// unit's machine and returns its exit code and output; runErr is what Juju
// reports as the failure message for a non-zero exit ("exit status N").
func (m *Model) runActionHandler(u *unit, hc *hookContext, run *actionRun) (code int, stdout, stderr string, runErr error) {
	name := run.res.Action
	charmDir := m.CharmDirOnMachine(u.name)
	hostCharm := filepath.Join(u.machine.dir, "var-lib-juju", strings.TrimPrefix(charmDir, "/var/lib/juju/"))
	handler := filepath.Join(charmDir, "dispatch")
	if _, err := os.Stat(filepath.Join(hostCharm, "dispatch")); err != nil {
		if _, err := os.Stat(filepath.Join(hostCharm, "actions", name)); err != nil {
			return 0, "", "", fmt.Errorf("action not implemented on unit %q", u.name)
		}
		handler = filepath.Join(charmDir, "actions", name)
	}
	env := m.hookEnv(u, hc)
	for i, kv := range env {
		switch {
		case strings.HasPrefix(kv, "JUJU_DISPATCH_PATH="):
			env[i] = "JUJU_DISPATCH_PATH=actions/" + name
		case strings.HasPrefix(kv, "JUJU_HOOK_NAME="):
			env[i] = "JUJU_HOOK_NAME="
		}
	}
	env = append(env, "JUJU_ACTION_NAME="+name, "JUJU_ACTION_UUID="+run.res.ID, "JUJU_ACTION_TAG=action-"+run.res.ID)
	m.appendUnitLog(u, fmt.Sprintf("running action %s %s", run.res.ID, name))
	var outBuf, errBuf strings.Builder
	cmd := m.machineCommand(u.machine, []string{handler}, env, charmDir)
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	if err := cmd.Start(); err != nil {
		return 1, "", "", fmt.Errorf("cannot start the action: %w", err)
	}
	m.mu.Lock()
	hc.pid = cmd.Process.Pid
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.HookTimeout)
	defer cancel()
	err := m.waitHandler(ctx, cmd)
	if out := strings.TrimSpace(outBuf.String() + errBuf.String()); out != "" {
		m.appendUnitLog(u, "action output: "+out)
	}
	return exitCode(err), outBuf.String(), errBuf.String(), err
}

// actionKeyRule is Juju's action name and result key rule
// (internal/charm/actions.go GetActionNameRule).
var actionKeyRule = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$`)

var reservedActionKeys = []string{"stdout", "stdout-encoding", "stderr", "stderr-encoding"}

// actionTool registers one action tool in hookTools.
func actionTool(name string) toolFunc {
	return func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolAction(hc, name, req.Args)
	}
}

// toolAction serves action-get, action-set, action-fail and action-log.
// Called with m.mu held.
func (m *Model) toolAction(hc *hookContext, tool string, args []string) (toolResponse, error) {
	run := m.acts.running[hc.id]
	if run == nil {
		return toolResponse{}, errorf("not running an action")
	}
	switch tool {
	case "action-get":
		vals, pos, err := parseArgs(args)
		if err != nil {
			return toolResponse{}, err
		}
		if len(pos) > 1 {
			return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
		}
		var answer any = run.res.Params
		if len(pos) == 1 {
			answer = lookupDotted(run.res.Params, strings.Split(pos[0], "."))
		}
		return output(vals["format"], answer), nil
	case "action-set":
		_, pos, err := parseArgs(args)
		if err != nil {
			return toolResponse{}, err
		}
		for _, a := range pos {
			k, v, ok := strings.Cut(a, "=")
			if !ok {
				return toolResponse{}, usagef("argument %q must be of the form key...=value", a)
			}
			keys := strings.Split(k, ".")
			for _, key := range keys {
				if !actionKeyRule.MatchString(key) {
					return toolResponse{}, usagef("key %q must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods", key)
				}
				for _, r := range reservedActionKeys {
					if r == key {
						return toolResponse{}, usagef("cannot set reserved action key %q", key)
					}
				}
			}
			if run.res.Results == nil {
				run.res.Results = map[string]any{}
			}
			bag := run.res.Results
			for _, key := range keys[:len(keys)-1] {
				next, ok := bag[key].(map[string]any)
				if !ok {
					next = map[string]any{}
					bag[key] = next
				}
				bag = next
			}
			bag[keys[len(keys)-1]] = v
		}
		return toolResponse{}, nil
	case "action-fail":
		_, pos, err := parseArgs(args)
		if err != nil {
			return toolResponse{}, err
		}
		if len(pos) > 1 {
			return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
		}
		msg := "action failed without reason given, check action for errors"
		if len(pos) == 1 {
			msg = pos[0]
		}
		run.res.Status, run.res.Message = ActionFailed, msg
		return toolResponse{}, nil
	case "action-log":
		_, pos, err := parseArgs(args)
		if err != nil {
			return toolResponse{}, err
		}
		if len(pos) == 0 {
			return toolResponse{}, usagef("no message specified")
		}
		line := strings.Join(pos, " ")
		run.res.Log = append(run.res.Log, line)
		m.appendUnitLog(hc.unit, fmt.Sprintf("action-log %s: %s", run.res.Action, line))
		return toolResponse{}, nil
	}
	return toolResponse{}, errorf("unknown command %q", tool)
}

func lookupDotted(params map[string]any, keys []string) any {
	var cur any = params
	for _, k := range keys {
		bag, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = bag[k]; !ok {
			return nil
		}
	}
	return cur
}

// QueuedActions returns the ids of the actions queued on a unit and not
// started yet.
func (m *Model) QueuedActions(unitName string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for _, r := range m.acts.queued[unitName] {
		ids = append(ids, r.res.ID)
	}
	sort.Strings(ids)
	return ids
}
