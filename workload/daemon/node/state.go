package node

// State is the node's lifecycle state, reported in status.
//
// A node is stopped (no Dqlite node runs) in waiting, refused, removed and
// error; a run (one go-dqlite node, from its start to its Close) is in
// bootstrapping, joining, starting, running, no-quorum, leaving or moving;
// reconfiguring, rebinding and stopping close the run.
//
//	                    config lists own address
//	  waiting ──────────────────────────────────────────┐
//	    │  bootstrap agent, empty dir, no listed         │ existing data:
//	    │  peer is or knows a cluster                    │ no leader says "not a member"
//	    ▼                                                ▼
//	bootstrapping ──┐   joining ──────────────┐      starting
//	                │     │ (a listed peer     │          │
//	                │     │  knows a cluster)  │          │
//	                └─────┴──────► running ◄───┴──────────┘
//	                              │  ▲   │ no leader
//	        own id left config    │  │   ▼
//	      ┌───────── leaving ◄────┘  └─ no-quorum ── the voters the config
//	      │                               │          dropped are gone (decide.Recover)
//	      │ removed by the leader         │                 ▼
//	      ▼                               │           reconfiguring ──► starting
//	   removed ◄──────────────────────────┘ (a leader's configuration
//	      │                                  lacks this node's id)
//	      │ config changed since the removal (or a new address)
//	      └──────► joining (new node id)
//
// moving (config gives a new address; the leader removes the node, which
// rejoins there) and rebinding (a single-member cluster changes address in
// place) follow `juju bind`; refused waits for a config this build can
// serve; stopping is SIGTERM; stepping-down is a running leader that could
// not commit for a while handing its leadership to another voter (it stays
// a member and follows).
type State string

// States reported in status.
const (
	StateWaiting       State = "waiting"
	StateRefused       State = "refused"
	StateBootstrapping State = "bootstrapping"
	StateJoining       State = "joining"
	StateStarting      State = "starting"
	StateRunning       State = "running"
	StateNoQuorum      State = "no-quorum"
	StateLeaving       State = "leaving"
	StateRemoved       State = "removed"
	StateReconfiguring State = "reconfiguring"
	StateRebinding     State = "rebinding"
	StateMoving        State = "moving"
	StateError         State = "error"
	StateStopping      State = "stopping"
	// StateSteppingDown: a leader that could not commit hands its
	// leadership over (commitwatch.go).
	StateSteppingDown State = "stepping-down"
)
