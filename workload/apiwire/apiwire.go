// Package apiwire is the contract between the controllers' HTTP API
// (controlplane/apiserver) and its consumers on agent machines and clients
// (consumer/apihttp): the routes, the header and the JSON body they share.
//
// Routes (JSON bodies are Lists):
//
//	GET /v1/api-addresses                          the current lists, at once
//	GET /v1/api-addresses/watch?version=V&timeout=D the lists once their version
//	                                               differs from V, or the
//	                                               unchanged lists after D
//	                                               (default 30 s, at most 5 min)
//
// Every response carries the current client list in header
// Dqc-Api-Addresses (comma-separated), so each client connection refreshes
// the client's store.
//
// The lists also carry the CA bundle the answering controller trusts
// (CABundle: the cluster CA, the old and the new one during a CA
// rotation), and their version moves when it changes, so that an agent
// watching the lists learns a new CA while the controllers still present
// certificates it can verify (step 1 of the charm's CA rotation) and keeps
// its agent config's cacert: current.
package apiwire

import "time"

// Routes and header.
const (
	PathAddresses         = "/v1/api-addresses"
	PathWatch             = "/v1/api-addresses/watch"
	HeaderClientAddresses = "Dqc-Api-Addresses"
)

// Watch timeouts.
const (
	DefaultWatchTimeout = 30 * time.Second
	MaxWatchTimeout     = 5 * time.Minute
)

// Lists are the address lists served to agents and clients.
type Lists struct {
	Agents  []string `json:"agents"`
	Clients []string `json:"clients"`
	// AgentFallback lists controllers whose agent addresses are all of
	// their addresses because none is in the management space.
	AgentFallback []string `json:"agent-fallback"`
	// CABundle is the PEM bundle of the CAs the answering controller
	// trusts ("" from a controller without TLS).
	CABundle string `json:"ca-bundle,omitempty"`
	// Version changes whenever any of the above changes.
	Version string `json:"version"`
}
