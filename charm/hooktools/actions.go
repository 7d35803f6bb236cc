package hooktools

import (
	"context"
	"sort"
)

// The action tools (juju/juju: internal/worker/uniter/runner/jujuc/
// action-get.go, action-set.go, action-fail.go, action-log.go).

// ActionGet runs `action-get --format=json`: every parameter, with the
// schema's defaults filled in by Juju.
func (c *Client) ActionGet(ctx context.Context) (map[string]any, error) {
	params := map[string]any{}
	if err := c.json(ctx, &params, "action-get", "--format=json"); err != nil {
		return nil, err
	}
	return params, nil
}

// ActionSet runs `action-set key=value ...` (keys sorted; dotted keys nest
// in the results).
func (c *Client) ActionSet(ctx context.Context, results map[string]string) error {
	if len(results) == 0 {
		return nil
	}
	keys := make([]string, 0, len(results))
	for k := range results {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := make([]string, 0, len(keys))
	for _, k := range keys {
		args = append(args, k+"="+results[k])
	}
	_, err := c.output(ctx, "action-set", args...)
	return err
}

// ActionFail runs `action-fail <message>`: the action is reported failed
// with that message.
func (c *Client) ActionFail(ctx context.Context, message string) error {
	_, err := c.output(ctx, "action-fail", "--", message)
	return err
}

// ActionLog runs `action-log <message>`: progress shown while the action
// runs.
func (c *Client) ActionLog(ctx context.Context, message string) error {
	_, err := c.output(ctx, "action-log", "--", message)
	return err
}
