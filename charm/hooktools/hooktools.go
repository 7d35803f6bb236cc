// Package hooktools runs Juju's hook tools (network-get, relation-get, ...)
// as the real executables Juju puts on PATH during a hook, and returns typed
// results. It asks for --format=json wherever the tool has it, so the parsing
// does not depend on Juju's "smart" formatter, and it never goes through a
// shell: every argument is passed as is.
//
// The package holds no state of its own: a Client wraps a Runner, and tests
// give it a fake Runner instead of the executables.
package hooktools

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
)

// Runner runs one executable and returns its standard output. When the
// command fails, the error is (or wraps) an *ExitError carrying the exit code
// and standard error, so that callers can tell a failing tool from a missing
// one.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExitError is a command that ran and failed.
type ExitError struct {
	// Name is the executable.
	Name string
	// Code is the exit code, -1 when the process was killed.
	Code int
	// Stdout is what the command printed before failing (systemctl
	// is-active prints the state and exits non-zero, for example).
	Stdout []byte
	// Stderr is what the command printed on standard error, trimmed.
	Stderr string
	// Err is the underlying error, e.g. "exit status 2".
	Err error
}

func (e *ExitError) Error() string {
	if e.Stderr == "" {
		return fmt.Sprintf("cannot run %s: %v", e.Name, e.Err)
	}
	return fmt.Sprintf("cannot run %s: %v: %s", e.Name, e.Err, e.Stderr)
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExecRunner runs commands with os/exec, without a shell. The zero value is
// ready to use; Env, when set, replaces the environment of the commands.
type ExecRunner struct {
	Env []string
}

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if r.Env != nil {
		cmd.Env = r.Env
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	code := -1
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return stdout.Bytes(), &ExitError{
		Name:   name,
		Code:   code,
		Stdout: stdout.Bytes(),
		Stderr: strings.TrimSpace(stderr.String()),
		Err:    err,
	}
}

// Client calls the hook tools through a Runner.
type Client struct {
	run Runner
}

// New returns a Client that runs the tools with r.
func New(r Runner) *Client {
	return &Client{run: r}
}

func (c *Client) output(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := c.run.Run(ctx, name, args...)
	if err != nil {
		var exitErr *ExitError
		if errors.As(err, &exitErr) {
			return nil, err
		}
		return nil, fmt.Errorf("cannot run %s: %w", name, err)
	}
	return out, nil
}

// ErrBadOutput marks a tool's output that cannot be parsed: the tool ran
// and exited 0, so, like a tool's own error, it is an answer about this
// hook's environment, which a status can explain, not a reason to fail the
// hook.
var ErrBadOutput = errors.New("unexpected output")

func (c *Client) json(ctx context.Context, v any, name string, args ...string) error {
	out, err := c.output(ctx, name, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("cannot parse %s output %q: %w: %w", name, abbreviate(out), ErrBadOutput, err)
	}
	return nil
}

func abbreviate(out []byte) string {
	const max = 200
	s := strings.TrimSpace(string(out))
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// Network is the output of network-get for one binding.
type Network struct {
	BindAddresses    []Device `json:"bind-addresses"`
	EgressSubnets    []string `json:"egress-subnets"`
	IngressAddresses []string `json:"ingress-addresses"`
}

// Device is one network device of a binding.
type Device struct {
	MACAddress    string          `json:"mac-address"`
	InterfaceName string          `json:"interface-name"`
	Addresses     []DeviceAddress `json:"addresses"`
}

// DeviceAddress is one address of a device.
type DeviceAddress struct {
	Hostname string `json:"hostname"`
	Value    string `json:"value"`
	CIDR     string `json:"cidr"`
}

// NetworkGet runs `network-get <binding> [-r <relation-id>] --format=json`.
// relationID may be empty.
func (c *Client) NetworkGet(ctx context.Context, binding, relationID string) (*Network, error) {
	args := []string{binding}
	if relationID != "" {
		args = append(args, "-r", relationID)
	}
	args = append(args, "--format=json")
	var n Network
	if err := c.json(ctx, &n, "network-get", args...); err != nil {
		return nil, err
	}
	return &n, nil
}

// RelationIDs runs `relation-ids <endpoint> --format=json`.
func (c *Client) RelationIDs(ctx context.Context, endpoint string) ([]string, error) {
	var ids []string
	if err := c.json(ctx, &ids, "relation-ids", endpoint, "--format=json"); err != nil {
		return nil, err
	}
	return ids, nil
}

// RelationList runs `relation-list -r <relation-id> --format=json`: the other
// units in the relation, without this one and (during relation-departed)
// without the departing one. The result is sorted.
func (c *Client) RelationList(ctx context.Context, relationID string) ([]string, error) {
	var units []string
	if err := c.json(ctx, &units, "relation-list", "-r", relationID, "--format=json"); err != nil {
		return nil, err
	}
	slices.Sort(units)
	return units, nil
}

// RelationGet runs `relation-get -r <relation-id> --format=json - <unit>`
// and returns the unit's whole data bag.
func (c *Client) RelationGet(ctx context.Context, relationID, unit string) (map[string]string, error) {
	return c.relationGet(ctx, relationID, unit, false)
}

// RelationGetApp runs `relation-get -r <relation-id> --app --format=json - <app>`
// and returns the application's data bag.
func (c *Client) RelationGetApp(ctx context.Context, relationID, app string) (map[string]string, error) {
	return c.relationGet(ctx, relationID, app, true)
}

func (c *Client) relationGet(ctx context.Context, relationID, owner string, app bool) (map[string]string, error) {
	args := []string{"-r", relationID}
	if app {
		args = append(args, "--app")
	}
	args = append(args, "--format=json", "-", owner)
	var bag map[string]string
	if err := c.json(ctx, &bag, "relation-get", args...); err != nil {
		return nil, err
	}
	if bag == nil {
		bag = map[string]string{}
	}
	return bag, nil
}

// RelationSet runs `relation-set -r <relation-id> [--app] key=value...` with
// the keys in sorted order. An empty value deletes the key, as in Juju.
// Juju splits each argument at its first "=", so keys may not contain one
// but values may.
func (c *Client) RelationSet(ctx context.Context, relationID string, app bool, data map[string]string) error {
	if len(data) == 0 {
		return nil
	}
	args := []string{"-r", relationID}
	if app {
		args = append(args, "--app")
	}
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if k == "" || strings.ContainsAny(k, "= \t\n") {
			return fmt.Errorf("cannot set relation data: invalid key %q", k)
		}
		args = append(args, k+"="+data[k])
	}
	_, err := c.output(ctx, "relation-set", args...)
	return err
}

// IsLeader runs `is-leader --format=json`.
func (c *Client) IsLeader(ctx context.Context) (bool, error) {
	var leader bool
	if err := c.json(ctx, &leader, "is-leader", "--format=json"); err != nil {
		return false, err
	}
	return leader, nil
}

// ConfigGet runs `config-get --format=json`: every option that is set or has
// a default. Numbers decode as json.Number so that integers stay exact.
func (c *Client) ConfigGet(ctx context.Context) (map[string]any, error) {
	out, err := c.output(ctx, "config-get", "--format=json")
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	var cfg map[string]any
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("cannot parse config-get output %q: %w", abbreviate(out), err)
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	return cfg, nil
}

// UnitGet runs `unit-get <key> --format=json`, e.g. key "private-address".
func (c *Client) UnitGet(ctx context.Context, key string) (string, error) {
	var v string
	if err := c.json(ctx, &v, "unit-get", key, "--format=json"); err != nil {
		return "", err
	}
	return v, nil
}

// OpenedPorts runs `opened-ports --format=json`: this unit's port ranges
// on every endpoint, e.g. "17070/tcp", "8000-8100/udp", "icmp"
// (juju/juju: internal/worker/uniter/runner/jujuc/opened-ports.go).
func (c *Client) OpenedPorts(ctx context.Context) ([]string, error) {
	var ports []string
	if err := c.json(ctx, &ports, "opened-ports", "--format=json"); err != nil {
		return nil, err
	}
	return ports, nil
}

// OpenPort runs `open-port <range>` for every endpoint; Juju applies it
// when the hook exits 0 (jujuc/ports.go).
func (c *Client) OpenPort(ctx context.Context, portRange string) error {
	_, err := c.output(ctx, "open-port", portRange)
	return err
}

// ClosePort runs `close-port <range>` for every endpoint.
func (c *Client) ClosePort(ctx context.Context, portRange string) error {
	_, err := c.output(ctx, "close-port", portRange)
	return err
}

// Status is a workload status name accepted by status-set.
type Status string

// The statuses a charm may set.
const (
	StatusActive      Status = "active"
	StatusBlocked     Status = "blocked"
	StatusMaintenance Status = "maintenance"
	StatusWaiting     Status = "waiting"
)

// StatusSet runs `status-set <status> <message>` for this unit. The message
// is passed as one argument after "--" so a leading "-" is not an option.
func (c *Client) StatusSet(ctx context.Context, status Status, message string) error {
	_, err := c.output(ctx, "status-set", string(status), "--", message)
	return err
}

// ApplicationVersionSet runs `application-version-set <version>`.
func (c *Client) ApplicationVersionSet(ctx context.Context, version string) error {
	_, err := c.output(ctx, "application-version-set", "--", version)
	return err
}

// LogLevel is a juju-log level.
type LogLevel string

// The levels juju-log accepts.
const (
	LevelDebug   LogLevel = "DEBUG"
	LevelInfo    LogLevel = "INFO"
	LevelWarning LogLevel = "WARNING"
	LevelError   LogLevel = "ERROR"
)

// Log runs `juju-log --log-level <level> -- <message>`.
func (c *Client) Log(ctx context.Context, level LogLevel, message string) error {
	_, err := c.output(ctx, "juju-log", "--log-level", string(level), "--", message)
	return err
}

// SecretAdd runs `secret-add --owner application --label <label>
// [--rotate <policy>] key=value...` (keys sorted) and returns the new
// secret's URI. Juju allows it on the leader only, and the secret exists
// once the hook exits 0 (juju/juju: internal/worker/uniter/runner/context/
// context.go, CreateSecret); with a rotate policy the leader gets
// secret-rotate when it is due.
func (c *Client) SecretAdd(ctx context.Context, label, description, rotate string, data map[string]string) (string, error) {
	args := []string{"--owner", "application", "--label", label}
	if description != "" {
		args = append(args, "--description", description)
	}
	if rotate != "" {
		args = append(args, "--rotate", rotate)
	}
	for _, k := range slices.Sorted(maps.Keys(data)) {
		args = append(args, k+"="+data[k])
	}
	out, err := c.output(ctx, "secret-add", args...)
	if err != nil {
		return "", err
	}
	uri := strings.TrimSpace(string(out))
	if !strings.HasPrefix(uri, "secret:") {
		return "", fmt.Errorf("cannot parse secret-add output %q", abbreviate(out))
	}
	return uri, nil
}

// SecretGet runs `secret-get <uri> --refresh --format=json` (refresh:
// the latest revision, tracked from now on) or without --refresh.
func (c *Client) SecretGet(ctx context.Context, uri string, refresh bool) (map[string]string, error) {
	args := []string{uri}
	if refresh {
		args = append(args, "--refresh")
	}
	var out map[string]string
	if err := c.json(ctx, &out, "secret-get", append(args, "--format=json")...); err != nil {
		return nil, err
	}
	return out, nil
}

// SecretIDs runs `secret-ids --format=json`: the secrets this unit owns
// (for the leader, the application's).
func (c *Client) SecretIDs(ctx context.Context) ([]string, error) {
	var out []string
	if err := c.json(ctx, &out, "secret-ids", "--format=json"); err != nil {
		return nil, err
	}
	return out, nil
}
