package charm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/juju/dqlite-controller/charm/bindaddr"
	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/controllerconf"
)

// Status notes appended to the active message about this unit's API
// addresses.
const (
	noteAgentFallback = "no address in the api binding's space, agents use all addresses"
	noteNoAPIAddress  = "no usable API address on this machine"
)

// apiHosts are this unit's own API addresses, as controller.conf carries
// them (see package controllerconf): all of them for clients, and the ones
// in the api binding's space for agents (empty: agents get all of them).
type apiHosts struct {
	all, agent []string
}

// localAddresses lists this machine's addresses once per hook: the bind
// address check and the API addresses must agree on one listing.
func (h *hook) localAddresses() ([]netip.Addr, error) {
	if !h.localDone {
		h.local, h.localErr = h.cfg.LocalAddresses.Addresses()
		h.localDone = true
	}
	return h.local, h.localErr
}

// resolveAPIHosts works out this unit's API addresses: every usable address
// of the machine (netlink), and those of them that network-get api reports
// for the api binding. It returns nil when the machine's addresses cannot be
// listed; controller.conf then keeps the last ones written.
//
// This is juju-mgmt-space as an endpoint binding: `juju bind
// dqlite-controller api=<space>` narrows the agent list, and fires
// config-changed, which runs this again. A unit without an address in that
// space leaves api-agent-hosts empty, and controllerd then gives agents all
// of its addresses (Juju 3.6's per-controller fallback), so that no agent
// loses its way to this controller.
func (h *hook) resolveAPIHosts(ctx context.Context) (*apiHosts, error) {
	local, err := h.localAddresses()
	if err != nil {
		h.log.Error("cannot list this machine's addresses; keeping the API addresses in controller.conf", "err", err)
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot check this machine's addresses: %v", err))
		return nil, nil
	}
	inSpace, err := h.apiBindingAddresses(ctx)
	if err != nil {
		return nil, err
	}
	api := &apiHosts{}
	for _, a := range bindaddr.Usable(local) {
		api.all = append(api.all, a.String())
		if inSpace[a] {
			api.agent = append(api.agent, a.String())
		}
	}
	switch {
	case len(api.all) == 0:
		h.log.Warn("this machine has no usable address for the API (only loopback, link-local or none)")
		h.activeNotes = append(h.activeNotes, noteNoAPIAddress)
	case len(api.agent) == 0:
		// Logged when the file changes (writeConfig); the status says it
		// on every hook.
		h.activeNotes = append(h.activeNotes, noteAgentFallback)
	}
	return api, nil
}

// apiBindingAddresses returns the addresses network-get reports for the api
// binding: its devices' addresses and its ingress addresses. A binding that
// Juju cannot resolve (an older charm revision without the api binding, or
// a space without an address of this machine) yields none.
func (h *hook) apiBindingAddresses(ctx context.Context) (map[netip.Addr]bool, error) {
	network, err := h.tools.NetworkGet(ctx, BindingAPI, "")
	if err != nil {
		var exitErr *hooktools.ExitError
		if errors.As(err, &exitErr) {
			// Every hook asks again; the fallback is logged when it
			// changes controller.conf and shown in the status.
			h.log.Debug("cannot get the api binding's addresses", "err", strings.TrimPrefix(exitErr.Stderr, "ERROR "))
			return nil, nil
		}
		if errors.Is(err, hooktools.ErrBadOutput) {
			h.log.Warn("cannot read the api binding's addresses", "err", err)
			return nil, nil
		}
		return nil, err
	}
	var values []string
	for _, dev := range network.BindAddresses {
		for _, a := range dev.Addresses {
			values = append(values, a.Value)
		}
	}
	values = append(values, network.IngressAddresses...)
	set := map[netip.Addr]bool{}
	for _, v := range values {
		addr, err := bindaddr.ParseAddress(v)
		if err != nil {
			h.log.Debug("not an API address candidate", "value", v)
			continue
		}
		set[addr.Unmap()] = true
	}
	return set, nil
}

// writeConfig writes this unit's controller.conf when its content changes:
// the cluster part from cluster (nil: keep the file's) and the API part from
// api (nil: keep the file's). A file that cannot be parsed is replaced only
// when both parts are known, so an unknown cluster list is never written
// as an empty one.
func (h *hook) writeConfig(cluster *controllerconf.Config, api *apiHosts) {
	path := h.cfg.ConfigPath(h.agentID)
	old, err := controllerconf.Read(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			h.log.Warn("the current controller.conf is unusable", "path", path, "err", err)
			if cluster == nil || api == nil {
				return
			}
		}
		old = &controllerconf.Config{DBBindAddresses: map[string]string{}}
	}
	want := &controllerconf.Config{
		DBBindAddresses:  old.DBBindAddresses,
		BootstrapAgentID: old.BootstrapAgentID,
		APIHosts:         old.APIHosts,
		APIAgentHosts:    old.APIAgentHosts,
	}
	if cluster != nil {
		want.DBBindAddresses, want.BootstrapAgentID = cluster.DBBindAddresses, cluster.BootstrapAgentID
	}
	if api != nil {
		want.APIHosts, want.APIAgentHosts = api.all, api.agent
	}
	changed, err := controllerconf.Write(path, want)
	if err != nil {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot write %s: %v", path, err))
		return
	}
	if !changed {
		return
	}
	clusterChanged := old.BootstrapAgentID != want.BootstrapAgentID || !maps.Equal(old.DBBindAddresses, want.DBBindAddresses)
	if clusterChanged && want.DBBindAddresses[h.agentID] != "" {
		h.joinExpected = true
	}
	h.log.Info("wrote controller.conf", "path", path,
		"db-bind-addresses", fmt.Sprint(want.DBBindAddresses), "bootstrap-agent-id", want.BootstrapAgentID,
		"api-hosts", strings.Join(want.APIHosts, " "), "api-agent-hosts", strings.Join(want.APIAgentHosts, " "))
	apiChanged := !slices.Equal(old.APIHosts, want.APIHosts) || !slices.Equal(old.APIAgentHosts, want.APIAgentHosts)
	if apiChanged && len(want.APIHosts) > 0 && len(want.APIAgentHosts) == 0 {
		h.log.Warn("no address of this machine is in the api binding's space (or network-get api failed): agents get all of its addresses")
	}
}
