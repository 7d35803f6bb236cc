package sim

import (
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"

	yamlv2 "gopkg.in/yaml.v2"
)

// toolError is a tool failure with Juju's exit code: 2 for usage errors,
// 1 for everything else (testdata/fixtures/INDEX.md, "Exit codes").
func toolError(err error) toolResponse {
	code := 1
	if _, ok := err.(usageError); ok {
		code = 2
	}
	return toolResponse{Code: code, Stderr: []byte("ERROR " + err.Error() + "\n")}
}

func output(format string, v any) toolResponse {
	data, err := formatValue(format, v)
	if err != nil {
		return toolError(err)
	}
	return toolResponse{Stdout: data}
}

type runError struct{ msg string }

func (e runError) Error() string { return e.msg }

func errorf(format string, args ...any) error { return runError{fmt.Sprintf(format, args...)} }
func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

var relationFlag = flagDef{names: []string{"r", "relation"}, value: true}

// toolFunc runs one hook tool for a hook context, with the model locked.
type toolFunc func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error)

// hookTools is the table of hook tools the simulator answers, by name. Each
// family of tools (relations, status, secrets, actions, ports) registers its
// entries here (secrets.go and actions.go add theirs below); every name
// becomes an executable on the hook's PATH.
var hookTools = map[string]toolFunc{
	"action-get":  actionTool("action-get"), // actions.go
	"action-set":  actionTool("action-set"),
	"action-fail": actionTool("action-fail"),
	"action-log":  actionTool("action-log"),
	"network-get": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolNetworkGet(hc, req.Args)
	},
	"relation-get": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolRelationGet(hc, req.Args)
	},
	"relation-set": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolRelationSet(hc, req.Args, req.Stdin)
	},
	"relation-list": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolRelationList(hc, req.Args)
	},
	"relation-ids": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolRelationIDs(hc, req.Args)
	},
	"is-leader": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolIsLeader(hc, req.Args)
	},
	"status-set": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolStatusSet(hc, req.Args)
	},
	"status-get": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolStatusGet(hc, req.Args)
	},
	"application-version-set": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolApplicationVersionSet(hc, req.Args)
	},
	"juju-log": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolJujuLog(hc, req.Args)
	},
	"config-get": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolConfigGet(hc, req.Args)
	},
	"unit-get": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolUnitGet(hc, req.Args)
	},
	// Opened ports (ports.go).
	"open-port": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolPort(hc, "open-port", req.Args)
	},
	"close-port": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolPort(hc, "close-port", req.Args)
	},
	"opened-ports": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolOpenedPorts(hc, req.Args)
	},
	// Secrets (secrets.go).
	"secret-add": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolSecretAdd(hc, req.Args)
	},
	"secret-get": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolSecretGet(hc, req.Args)
	},
	"secret-set": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolSecretSet(hc, req.Args)
	},
	"secret-ids": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolSecretIDs(hc, req.Args)
	},
	"secret-remove": func(m *Model, hc *hookContext, req toolRequest) (toolResponse, error) {
		return m.toolSecretRemove(hc, req.Args)
	},
}

func (m *Model) runToolCommand(hc *hookContext, req toolRequest) toolResponse {
	m.mu.Lock()
	defer m.mu.Unlock()
	run, ok := hookTools[req.Tool]
	if !ok {
		return toolError(errorf("unknown command %q", req.Tool))
	}
	resp, err := run(m, hc, req)
	if err != nil {
		return toolError(err)
	}
	return resp
}

func (m *Model) toolIsLeader(hc *hookContext, args []string) (toolResponse, error) {
	vals, _, err := parseArgs(args)
	if err != nil {
		return toolResponse{}, err
	}
	return output(vals["format"], m.claimLeaderLocked(hc)), nil
}

// claimLeaderLocked is the hook context's leadership check: every call
// claims the lease anew, and once a claim fails the unit stays a minion for
// the rest of the hook (runner/context/leader.go ensureLeader).
func (m *Model) claimLeaderLocked(hc *hookContext) bool {
	if hc.minion {
		return false
	}
	if m.leader != hc.unit.name {
		hc.minion = true
		return false
	}
	return true
}

func (m *Model) toolApplicationVersionSet(hc *hookContext, args []string) (toolResponse, error) {
	_, pos, err := parseArgs(args)
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) != 1 {
		return toolResponse{}, usagef("no version specified")
	}
	hc.unit.version = pos[0]
	return toolResponse{}, nil
}

// relationArg resolves -r (either "<endpoint>:<id>" or "<id>") or the hook's
// own relation.
func (m *Model) relationArg(hc *hookContext, vals map[string]string) (*relation, error) {
	v, ok := vals["r"]
	if !ok {
		if hc.hook.rel == nil {
			return nil, usagef("no relation id specified")
		}
		return hc.hook.rel, nil
	}
	idStr := v
	endpoint := ""
	if ep, id, ok := strings.Cut(v, ":"); ok {
		endpoint, idStr = ep, id
	}
	id, err := strconv.Atoi(idStr)
	if err == nil {
		for _, r := range m.relations {
			if r.id == id && (endpoint == "" || endpoint == r.endpoint) && hc.unit.related[r.id] {
				return r, nil
			}
		}
	}
	// A relation the unit has not entered the scope of is not in its hook
	// context (runner/context/contextfactory.go getContextRelations), so
	// jujuc's -r parser does not find it (jujuc/util.go relationIdValue).
	return nil, usagef("invalid value %q for option -r: relation not found", v)
}

func (m *Model) toolNetworkGet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, relationFlag,
		flagDef{names: []string{"bind-address"}}, flagDef{names: []string{"ingress-address"}},
		flagDef{names: []string{"egress-subnets"}}, flagDef{names: []string{"primary-address"}})
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("no arguments specified")
	}
	if len(pos) > 1 {
		return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
	}
	if _, ok := vals["r"]; ok {
		if _, err := m.relationArg(hc, vals); err != nil {
			return toolResponse{}, err
		}
	}
	binding := pos[0]
	if !m.validEndpoint(binding) {
		return toolResponse{}, errorf("no network config found for binding %q", binding)
	}
	info := m.networkInfoLocked(hc.unit, binding)
	if len(info.Bind) == 0 && len(info.Ingress) == 0 {
		return toolResponse{}, errorf("no network config found for binding %q", binding)
	}
	bind := ""
	if len(info.Bind) > 0 {
		bind = info.Bind[0].Addresses[0].Value
	}
	ingress := bind
	if len(info.Ingress) > 0 {
		ingress = info.Ingress[0]
	}
	picked := map[string]any{}
	for flag, v := range map[string]any{"bind-address": bind, "ingress-address": ingress, "egress-subnets": info.Egress, "primary-address": bind} {
		if isTrue(vals[flag]) {
			picked[flag] = v
		}
	}
	format := vals["format"]
	switch len(picked) {
	case 0:
		if format == "json" {
			return output(format, info), nil
		}
		return output("yaml", info), nil
	case 1:
		for _, v := range picked {
			return output(format, v), nil
		}
	}
	return output(format, picked), nil
}

// bagLocked reads a unit's bag as the hook context sees it. A member's bag
// comes from the agent's cache, read at most once between two of its
// relation hooks; anybody else's (the unit's own, a departed unit's) is read
// once per hook; the unit's own shows its uncommitted relation-set
// (runner/context/cache.go Settings).
func (m *Model) bagLocked(hc *hookContext, r *relation, unitName string) map[string]string {
	u := hc.unit
	var bag map[string]string
	var ok bool
	if u.joined[r.id][unitName] {
		if u.relCache[r.id] == nil {
			u.relCache[r.id] = map[string]map[string]string{}
		}
		if bag, ok = u.relCache[r.id][unitName]; !ok {
			bag = maps.Clone(r.unitData[unitName])
			u.relCache[r.id][unitName] = bag
		}
	} else {
		key := fmt.Sprintf("%d/%s", r.id, unitName)
		if bag, ok = hc.cache[key]; !ok {
			bag = maps.Clone(r.unitData[unitName])
			hc.cache[key] = bag
		}
	}
	bag = maps.Clone(bag)
	if bag == nil {
		bag = map[string]string{}
	}
	if unitName == u.name {
		for k, v := range hc.unitDelta[r.id] {
			if v == nil {
				delete(bag, k)
			} else {
				bag[k] = *v
			}
		}
	}
	return bag
}

// appBagLocked reads the application bag once per hook (cache.go
// ApplicationSettings; the cache is pruned for every hook), with the
// leader's own uncommitted writes on top.
func (m *Model) appBagLocked(hc *hookContext, r *relation) map[string]string {
	bag, ok := hc.appCache[r.id]
	if !ok {
		bag = maps.Clone(r.appData)
		hc.appCache[r.id] = bag
	}
	bag = maps.Clone(bag)
	if bag == nil {
		bag = map[string]string{}
	}
	for k, v := range hc.appDelta[r.id] {
		if v == nil {
			delete(bag, k)
		} else {
			bag[k] = *v
		}
	}
	return bag
}

// toolRelationGet follows jujuc/relation-get.go: the key, then the target
// (determineUnitOrAppName), then the read.
func (m *Model) toolRelationGet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, relationFlag, flagDef{names: []string{"app"}})
	if err != nil {
		return toolResponse{}, err
	}
	if _, ok := vals["r"]; !ok && hc.hook.rel == nil {
		return toolResponse{}, usagef("no relation id specified")
	}
	r, err := m.relationArg(hc, vals)
	if err != nil {
		return toolResponse{}, err
	}
	key := ""
	if len(pos) > 0 {
		key = pos[0]
		if key == "-" {
			key = ""
		}
		pos = pos[1:]
	}
	app := isTrue(vals["app"])
	target := ""
	switch {
	case len(pos) > 0:
		target = pos[0]
		pos = pos[1:]
		if app {
			if a, _, isUnit := strings.Cut(target, "/"); isUnit {
				target = a
			}
		} else if !validUnitName(target) {
			if validAppName(target) {
				return toolResponse{}, usagef("expected unit name, got application name %q", target)
			}
			return toolResponse{}, usagef("invalid unit name %q", target)
		}
	case app:
		if hc.hook.rel == nil || hc.hook.remoteApp == "" {
			return toolResponse{}, usagef("no unit or application specified")
		}
		target = hc.hook.remoteApp
	case hc.hook.remoteUnit != "":
		target = hc.hook.remoteUnit
	case hc.hook.rel != nil && hc.hook.remoteApp != "":
		// No remote unit but a remote application (an app-bag
		// relation-changed, relation-created): read the app bag.
		target, app = hc.hook.remoteApp, true
	default:
		return toolResponse{}, usagef("no unit or application specified")
	}
	if len(pos) > 0 {
		return toolResponse{}, usagef("unrecognized args: %q", pos)
	}
	var bag map[string]string
	if app {
		if target != m.app {
			return toolResponse{}, errorf("permission denied")
		}
		// Reading the own application's bag claims leadership first
		// (relation-get.go mustReadSettingsFromController): a minion
		// reads the committed bag from the controller.
		m.claimLeaderLocked(hc)
		bag = m.appBagLocked(hc, r)
	} else {
		if _, known := r.unitData[target]; !known && target != hc.unit.name {
			return toolResponse{}, errorf("%s", m.unknownUnitError(r, target))
		}
		bag = m.bagLocked(hc, r, target)
	}
	format := vals["format"]
	if key == "" {
		return output(format, bag), nil
	}
	v, ok := bag[key]
	if !ok {
		return output(format, nil), nil
	}
	return output(format, v), nil
}

// unknownUnitError is relation-get's error for a unit that was never in the
// relation, in the text of the Juju version simulated.
func (m *Model) unknownUnitError(r *relation, target string) string {
	if m.opts.Juju36 {
		return fmt.Sprintf("cannot read settings for unit %q in relation %q: unit %q: settings not found", target, m.app+":"+r.endpoint, target)
	}
	return "relation unit not found"
}

func validAppName(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return !strings.HasSuffix(s, "-")
}

func validUnitName(s string) bool {
	app, num, ok := strings.Cut(s, "/")
	if !ok || !validAppName(app) || num == "" {
		return false
	}
	_, err := strconv.ParseUint(num, 10, 32)
	return err == nil && (num == "0" || num[0] != '0')
}

func (m *Model) toolRelationSet(hc *hookContext, args []string, file []byte) (toolResponse, error) {
	vals, pos, err := parseArgs(args, relationFlag, flagDef{names: []string{"app"}}, flagDef{names: []string{"file"}, value: true})
	if err != nil {
		return toolResponse{}, err
	}
	r, err := m.relationArg(hc, vals)
	if err != nil {
		return toolResponse{}, err
	}
	settings := map[string]string{}
	if _, ok := vals["file"]; ok {
		if err := yamlv2.Unmarshal(file, &settings); err != nil {
			return toolResponse{}, usagef("cannot parse settings file: %v", err)
		}
	}
	for _, kv := range pos {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return toolResponse{}, usagef("expected \"key=value\", got %q", kv)
		}
		settings[k] = v
	}
	deltas := hc.unitDelta
	if isTrue(vals["app"]) {
		// Application settings are the leader's (a claim, as is-leader);
		// the controller checks again when the hook commits.
		if !m.claimLeaderLocked(hc) {
			return toolResponse{}, errorf("cannot write relation settings")
		}
		deltas = hc.appDelta
	}
	if deltas[r.id] == nil {
		deltas[r.id] = map[string]*string{}
	}
	for k, v := range settings {
		if v == "" {
			deltas[r.id][k] = nil // an empty value deletes the key
		} else {
			v := v
			deltas[r.id][k] = &v
		}
	}
	return toolResponse{}, nil
}

func (m *Model) toolRelationList(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, relationFlag, flagDef{names: []string{"app"}})
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) > 0 {
		return toolResponse{}, usagef("unrecognized args: %q", pos)
	}
	r, err := m.relationArg(hc, vals)
	if err != nil {
		return toolResponse{}, err
	}
	if isTrue(vals["app"]) {
		return output(vals["format"], m.remoteAppOf(r)), nil
	}
	// The unit's own view of the members: units it has joined, without a
	// unit being departed (docs/juju.md#hook-tools).
	members := sortedKeys(hc.unit.joined[r.id])
	if members == nil {
		members = []string{}
	}
	return output(vals["format"], members), nil
}

func (m *Model) toolRelationIDs(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args)
	if err != nil {
		return toolResponse{}, err
	}
	name := ""
	if hc.hook.rel != nil {
		name = hc.hook.rel.endpoint
	}
	if len(pos) > 0 {
		name = pos[0]
	}
	if len(pos) > 1 {
		return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
	}
	if name == "" {
		return toolResponse{}, usagef("no endpoint name specified")
	}
	ids := []string{}
	for _, r := range m.relations {
		// Only relations in the hook context: none before the unit
		// enters scope (contextfactory.go getContextRelations).
		if r.endpoint == name && hc.unit.related[r.id] {
			ids = append(ids, r.idString())
		}
	}
	return output(vals["format"], ids), nil
}

var validStatuses = []string{"maintenance", "blocked", "waiting", "active"}

func (m *Model) toolStatusSet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, flagDef{names: []string{"application"}})
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("invalid args, require <status> [message] [data]")
	}
	ok := false
	for _, s := range validStatuses {
		ok = ok || s == pos[0]
	}
	if !ok {
		return toolResponse{}, usagef("invalid status %q, expected one of [%s]", pos[0], strings.Join(validStatuses, " "))
	}
	msg := ""
	if len(pos) > 1 {
		msg = pos[1]
	}
	if isTrue(vals["application"]) {
		// jujuc/status-set.go: the application status is the leader's
		// (context.go SetApplicationStatus claims leadership).
		if !m.claimLeaderLocked(hc) {
			return toolResponse{}, errorf("this unit is not the leader")
		}
		m.appStatus = [2]string{pos[0], msg}
		m.notifyLocked()
		return toolResponse{}, nil
	}
	// status-set applies at once and is not rolled back (docs/juju.md#relation-data).
	u := hc.unit
	if u.failed != nil {
		// An action runs while a hook is in error: juju status keeps
		// showing the error until it is resolved.
		u.savedWorkload, u.statusSet = [2]string{pos[0], msg}, true
		m.notifyLocked()
		return toolResponse{}, nil
	}
	u.workload, u.message, u.statusSet = pos[0], msg, true
	m.notifyLocked()
	return toolResponse{}, nil
}

func (m *Model) toolStatusGet(hc *hookContext, args []string) (toolResponse, error) {
	vals, _, err := parseArgs(args, flagDef{names: []string{"application"}}, flagDef{names: []string{"include-data"}})
	if err != nil {
		return toolResponse{}, err
	}
	u := hc.unit
	if isTrue(vals["application"]) {
		if !m.claimLeaderLocked(hc) {
			return toolResponse{}, errorf("finding application status: this unit is not the leader")
		}
		if !isTrue(vals["include-data"]) {
			return output(vals["format"], m.appStatus[0]), nil
		}
		return output(vals["format"], map[string]any{"status": m.appStatus[0], "message": m.appStatus[1], "status-data": map[string]any{}}), nil
	}
	if !isTrue(vals["include-data"]) {
		return output(vals["format"], u.workload), nil
	}
	return output(vals["format"], map[string]any{"status": u.workload, "message": u.message, "status-data": map[string]any{}}), nil
}

func (m *Model) toolJujuLog(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, flagDef{names: []string{"l", "log-level"}, value: true}, flagDef{names: []string{"debug"}})
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) == 0 {
		return toolResponse{}, usagef("no message specified")
	}
	level := strings.ToUpper(vals["l"])
	if level == "" {
		level = "INFO"
	}
	if isTrue(vals["debug"]) {
		level = "DEBUG"
	}
	m.appendUnitLog(hc.unit, fmt.Sprintf("%s juju-log %s: %s", level, hc.hook.name, strings.Join(pos, " ")))
	return toolResponse{}, nil
}

func (m *Model) toolConfigGet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args, flagDef{names: []string{"a", "all"}})
	if err != nil {
		return toolResponse{}, err
	}
	cfg := m.effectiveConfigLocked()
	format := vals["format"]
	if len(pos) > 1 {
		return toolResponse{}, usagef("unrecognized args: %q", pos[1:])
	}
	if len(pos) == 1 {
		if isTrue(vals["a"]) {
			return toolResponse{}, usagef("cannot use argument --all together with key %q", pos[0])
		}
		return output(format, cfg[pos[0]]), nil
	}
	if !isTrue(vals["a"]) {
		for k, v := range cfg {
			if v == nil {
				delete(cfg, k)
			}
		}
	}
	return output(format, cfg), nil
}

func (m *Model) toolUnitGet(hc *hookContext, args []string) (toolResponse, error) {
	vals, pos, err := parseArgs(args)
	if err != nil {
		return toolResponse{}, err
	}
	if len(pos) != 1 {
		return toolResponse{}, usagef("no setting specified")
	}
	if pos[0] != "private-address" && pos[0] != "public-address" {
		return toolResponse{}, usagef("unknown setting %q", pos[0])
	}
	info := m.networkInfoLocked(hc.unit, "juju-info")
	addr := ""
	if len(info.Ingress) > 0 {
		addr = info.Ingress[0]
	} else if addrs := hc.unit.machine.addresses(); len(addrs) > 0 {
		addr = addrs[0]
	}
	return output(vals["format"], addr), nil
}

// sortedUnitNames orders unit names by number.
func sortedUnitNames(names []string) []string {
	sort.Slice(names, func(i, j int) bool {
		ni, _ := strconv.Atoi(names[i][strings.LastIndex(names[i], "/")+1:])
		nj, _ := strconv.Atoi(names[j][strings.LastIndex(names[j], "/")+1:])
		return ni < nj
	})
	return names
}
