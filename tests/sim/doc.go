// Package sim is a Juju model simulator for end-to-end tests: it runs a built
// machine charm (its dispatch binary, unchanged) the way a Juju 4 controller
// and its unit agents would, on simulated machines that are real Linux
// network namespaces with their own /var/lib/juju and /etc/systemd/system.
//
// It is the project's only stand-in, so it must never be kinder than Juju
// (docs/juju.md describes what Juju does, docs/simulator.md where the
// simulator knowingly differs). It follows Juju's unit agent (juju/juju:
// internal/worker/uniter/...):
//
//   - hook dispatch and environment variables (runner/context/env.go);
//   - hook tools as executables on the hook's PATH that talk to the simulator
//     over a unix socket (JUJU_AGENT_SOCKET_ADDRESS + JUJU_CONTEXT_ID), with
//     Juju's flags, output formats and error texts (runner/jujuc/*.go and the
//     samples in testdata/fixtures);
//   - the resolver's hook order (resolver.go, relation/resolver.go): scope
//     entered after install and before relation-created, departed before
//     joined, upgrade-charm then config-changed after a refresh;
//   - the hook context (runner/context/contextfactory.go, cache.go): no
//     relation before scope, members' bags cached across hooks, the
//     application bag once per hook, changes committed only when a hook
//     exits 0, application data only from the current leader;
//   - leadership (runner/context/leader.go, internal/worker/leadership):
//     random elections, is-leader claiming per call with a sticky false,
//     leases lapsing after an agent is lost or cut off;
//   - network-get's bind, ingress and egress addresses computed from the
//     machine's real addresses, Juju 4's best-scope-tier ingress or, with
//     Options.Juju36, Juju 3.6's unfiltered list;
//   - a systemctl that supervises the services the charm installs.
//
// The simulator binary is whatever program imports this package: the hook
// tools, systemctl and the namespace-entering helper are that same executable
// re-run with DQCSIM_TOOL set (see reexec.go).
package sim
