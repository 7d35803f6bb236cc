// Package sim is a Juju model simulator for end-to-end tests: it runs a built
// machine charm (its dispatch binary, unchanged) the way a Juju 4 controller
// and its unit agents would, on simulated machines that are real Linux
// network namespaces with their own /var/lib/juju and /etc/systemd/system.
//
// What it reproduces, with the section of docs/juju.md each behaviour
// comes from (docs/simulator.md lists where it knowingly differs):
//
//   - hook dispatch and environment variables ("Hook dispatch and environment");
//   - hook tools as executables on the hook's PATH that talk to the simulator
//     over a unix socket (JUJU_AGENT_SOCKET_ADDRESS + JUJU_CONTEXT_ID), with
//     Juju's flags, output formats and error texts ("Hook tools", testdata/fixtures/);
//   - network-get's bind, ingress and egress addresses computed from the
//     machine's real addresses ("Addresses and bindings"), Juju 4's best-scope-tier ingress or,
//     with Options.Juju36Ingress, Juju 3.6's unfiltered list;
//   - the hook order of deploy, add-unit, remove-unit, bind, config changes and
//     leadership changes ("Hook order", "Removing a unit", "juju bind and
//     config-changed", "Leadership");
//   - relation data committed only when a hook exits 0 ("Relation data");
//   - a systemctl that supervises the services the charm installs.
//
// The simulator binary is whatever program imports this package: the hook
// tools, systemctl and the namespace-entering helper are that same executable
// re-run with DQCSIM_TOOL set (see reexec.go).
package sim
