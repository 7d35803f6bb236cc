package charm

import (
	"context"
	"path/filepath"

	"github.com/juju/dqlite-controller/charm/cos"
	"github.com/juju/dqlite-controller/clustertls"
)

// publishCOS keeps this unit's cos-agent data (package cos: the scrape job
// for controllerd's /metrics on the API port, the alert rules and the
// dashboard) in every cos-agent relation, written only when it differs.
// Failures are logged: observability must not fail a hook.
func (h *hook) publishCOS(ctx context.Context, apiPort int) {
	ids, err := h.tools.RelationIDs(ctx, cos.Endpoint)
	if err != nil || len(ids) == 0 {
		return
	}
	want, err := cos.UnitData(h.env.AppName(), apiPort, filepath.Join(clustertls.Dir(h.cfg.ConfigPath(h.agentID)), clustertls.CAFile))
	if err != nil {
		h.log.Warn("cannot build the cos-agent data", "err", err)
		return
	}
	for _, id := range ids {
		mine, err := h.tools.RelationGet(ctx, id, h.env.UnitName)
		if err != nil {
			h.log.Warn("cannot read this unit's cos-agent data", "relation", id, "err", err)
			continue
		}
		if mine[cos.Key] == want {
			continue
		}
		if err := h.tools.RelationSet(ctx, id, false, map[string]string{cos.Key: want}); err != nil {
			h.log.Warn("cannot publish the cos-agent data", "relation", id, "err", err)
		}
	}
}
