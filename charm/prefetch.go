package charm

import "path/filepath"

// PrefetchCalls are the tool calls of a hook that hooktools.Prefetch may
// start at once, exactly as Reconcile makes them: reads whose answers do
// not change while the hook runs and do not depend on each other.
func PrefetchCalls(env Env) [][]string {
	return [][]string{
		{"config-get", "--format=json"},
		{"relation-ids", Endpoint, "--format=json"},
		{"network-get", BindingAPI, "--format=json"},
		{filepath.Join(env.CharmDir, "controllerd"), "version"},
	}
}
