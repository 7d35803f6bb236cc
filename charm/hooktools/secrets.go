package hooktools

import (
	"context"
	"maps"
	"slices"
	"strconv"
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

// SecretSetRotate runs `secret-set <uri> --rotate <policy>`: it changes
// the secret's rotate policy alone (no new revision), restarting its
// schedule from now. Leader only for an application-owned secret; it
// takes effect once the hook exits 0.
func (c *Client) SecretSetRotate(ctx context.Context, uri, policy string) error {
	_, err := c.output(ctx, "secret-set", uri, "--rotate", policy)
	return err
}

// SecretRemoveRevision runs `secret-remove <uri> --revision <n>`: the
// revision's content is deleted once the hook exits 0 (juju/juju:
// internal/worker/uniter/runner/jujuc/secret-remove.go; runner/context/
// context.go RemoveSecret, leader only for an application-owned secret).
func (c *Client) SecretRemoveRevision(ctx context.Context, uri string, revision int) error {
	_, err := c.output(ctx, "secret-remove", uri, "--revision", strconv.Itoa(revision))
	return err
}
