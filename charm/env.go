package charm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Env is the part of the hook environment the charm reads (docs/juju.md
// "Hook dispatch and environment").
type Env struct {
	// Hook is the hook name, e.g. "install" or "db-cluster-relation-changed";
	// empty when an action runs.
	Hook string
	// Action is the action's name when Juju runs one (JUJU_DISPATCH_PATH
	// actions/<name>); empty in a hook.
	Action string
	// UnitName is this unit, e.g. "dqlite-controller/3".
	UnitName string
	// CharmDir is the charm's directory (JUJU_CHARM_DIR).
	CharmDir string
	// RelationName and RelationID are set in relation hooks.
	RelationName, RelationID string
	// RemoteUnit is empty in relation-created and app-data relation-changed.
	RemoteUnit string
	// RemoteApp is the other side's application (for peers, this one).
	RemoteApp string
	// DepartingUnit is set in relation-departed: the unit leaving, which is
	// this unit when this unit is the one being removed.
	DepartingUnit string
	// SecretID is set in secret hooks (JUJU_SECRET_ID): the secret's URI.
	SecretID string
	// SecretRevision is set in secret hooks about one revision
	// (JUJU_SECRET_REVISION: secret-remove's obsolete revision), else 0.
	SecretRevision int
}

// EnvFromGetenv reads the hook environment with getenv (os.Getenv in the
// hook binary). The hook or action name comes from JUJU_DISPATCH_PATH
// ("hooks/<name>" or "actions/<name>"), as Juju sets it for a charm with a
// dispatch script, else JUJU_HOOK_NAME.
func EnvFromGetenv(getenv func(string) string) (Env, error) {
	env := Env{
		UnitName:      getenv("JUJU_UNIT_NAME"),
		CharmDir:      getenv("JUJU_CHARM_DIR"),
		RelationName:  getenv("JUJU_RELATION"),
		RelationID:    getenv("JUJU_RELATION_ID"),
		RemoteUnit:    getenv("JUJU_REMOTE_UNIT"),
		RemoteApp:     getenv("JUJU_REMOTE_APP"),
		DepartingUnit: getenv("JUJU_DEPARTING_UNIT"),
		SecretID:      getenv("JUJU_SECRET_ID"),
	}
	if v := getenv("JUJU_SECRET_REVISION"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return Env{}, fmt.Errorf("cannot handle JUJU_SECRET_REVISION %q: not a revision number", v)
		}
		env.SecretRevision = n
	}
	if env.CharmDir == "" {
		env.CharmDir = getenv("CHARM_DIR")
	}
	if p := getenv("JUJU_DISPATCH_PATH"); p != "" {
		kind, name, _ := strings.Cut(p, "/")
		if (kind != "hooks" && kind != "actions") || name == "" || strings.Contains(name, "/") {
			return Env{}, fmt.Errorf("cannot handle JUJU_DISPATCH_PATH %q: neither hooks/<name> nor actions/<name>", p)
		}
		if kind == "actions" {
			env.Action = name
		} else {
			env.Hook = name
		}
	} else {
		env.Hook = getenv("JUJU_HOOK_NAME")
	}
	if env.Hook == "" && env.Action == "" {
		return Env{}, errors.New("cannot tell which hook to run: JUJU_DISPATCH_PATH and JUJU_HOOK_NAME are unset")
	}
	if env.UnitName == "" {
		return Env{}, errors.New("cannot tell which unit this is: JUJU_UNIT_NAME is unset")
	}
	if env.CharmDir == "" {
		return Env{}, errors.New("cannot find the charm: JUJU_CHARM_DIR is unset")
	}
	return env, nil
}

// AppName is the application part of UnitName.
func (e Env) AppName() string {
	app, _, _ := strings.Cut(e.UnitName, "/")
	return app
}
