package hooktools

import (
	"context"
	"maps"
	"slices"
)

// SecretSet runs `secret-set <uri> key=value...` (keys sorted): the
// content of a new revision, which replaces the whole content (keys left
// out are gone from it). Juju allows it for an application-owned secret on
// the leader only; the revision exists once the hook exits 0, and none is
// made when the content is unchanged (juju/juju: internal/worker/uniter/
// runner/jujuc/secret-set.go; runner/context/context.go UpdateSecret).
func (c *Client) SecretSet(ctx context.Context, uri string, data map[string]string) error {
	args := []string{uri}
	for _, k := range slices.Sorted(maps.Keys(data)) {
		args = append(args, k+"="+data[k])
	}
	_, err := c.output(ctx, "secret-set", args...)
	return err
}
