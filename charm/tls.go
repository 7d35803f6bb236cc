package charm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/clustertls"
)

// The cluster CA lives in an application-owned Juju secret; only its URI
// travels in the peer application data.
//
// Trust model (docs: README "The cluster CA"): the leader creates the CA
// once (ECDSA P-256) and stores its certificate and key in the secret.
// Every unit of the application can read an application-owned secret, so
// each unit issues its own node certificate from the CA, for a key it
// generated on its machine (mode 0600, never sent anywhere). The
// trade-off: the CA key is on every controller machine's hook (in memory,
// never on disk), so a compromised controller machine can mint
// certificates for any controller id; but it could read the controller
// database anyway, and the alternative (the leader signing requests sent
// through relation data) would make every joining unit wait for a leader
// hook and would put the leader's availability in the way of renewals.
// The trust rule (package clustertls) still locks a removed unit out,
// whatever certificate it holds, since it checks the controller id
// against the current config and membership.
const (
	// KeyCASecretID is the application data key holding the CA secret's URI.
	KeyCASecretID = "ca-secret-id"
	// CASecretLabel is the owner label of the CA secret.
	CASecretLabel = "dqlite-controller-cluster-ca"
	// Secret content keys (Juju: [a-z](-?[a-z0-9]){2,}).
	secretCACert = "ca-cert"
	secretCAKey  = "ca-key"
	// secretCABundle, when present, is the trust bundle during a CA
	// rotation: the CAs to trust besides ca-cert (the issuing one).
	secretCABundle = "ca-bundle"
)

const msgWaitingCA = "waiting for the leader to create the cluster CA"

// ensureCA runs before the peer reconciliation: the leader creates the CA
// secret if the application data names none, and it returns the secret's
// URI ("" while there is none). It is the hook's first leadership check,
// so that the peer reconciliation's own check comes after it: a leader
// that loses leadership in between has its whole hook refused (application
// data commits only from a leader) before any file is written from data
// that never committed.
func (h *hook) ensureCA(ctx context.Context, relID string) (string, error) {
	app, err := h.tools.RelationGetApp(ctx, relID, h.env.AppName())
	if err != nil {
		return "", err
	}
	if uri := app[KeyCASecretID]; uri != "" {
		return uri, nil
	}
	leader, err := h.tools.IsLeader(ctx)
	if err != nil {
		return "", err
	}
	if !leader {
		h.status.add(hooktools.StatusWaiting, msgWaitingCA)
		return "", nil
	}
	uri, err := h.createCA(ctx, relID)
	if err != nil {
		var exit *hooktools.ExitError
		if errors.As(err, &exit) && strings.Contains(exit.Stderr, "not the leader") {
			// Leadership moved during the hook: the new leader creates
			// it (nothing of this hook's secret commits).
			h.log.Info("lost leadership before creating the cluster CA")
			h.status.add(hooktools.StatusWaiting, msgWaitingCA)
			return "", nil
		}
		return "", err
	}
	return uri, nil
}

// reconcileTLS makes this unit's TLS material current: it reads the CA
// secret (latest revision) and provisions the node key and certificate for
// the unit's published bind address (re-issued when the address changes,
// when it nears expiry, or when the CA changes). Every hook runs it, so
// update-status (every 5 minutes in Juju) renews a certificate within
// clustertls.RenewBefore of its expiry without an operator. It then hands
// over to the CA rotation (rotation.go), whose leader part is the only
// leadership decision here.
func (h *hook) reconcileTLS(ctx context.Context, relID, uri string) error {
	if uri == "" {
		return nil
	}
	content, err := h.tools.SecretGet(ctx, uri, true)
	if err != nil {
		var exit *hooktools.ExitError
		if errors.As(err, &exit) {
			// Not readable (yet): say so rather than fail the hook.
			h.log.Warn("cannot read the cluster CA secret", "uri", uri, "err", err)
			h.status.add(hooktools.StatusWaiting, fmt.Sprintf("cannot read the cluster CA secret %s: %s", uri, firstLine(exit.Stderr)))
			return nil
		}
		return err
	}
	if err := h.pruneCARevision(ctx, uri); err != nil { // rotation.go
		return err
	}
	ca, err := clustertls.ParseCA([]byte(content[secretCACert]), []byte(content[secretCAKey]))
	if err != nil {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("the cluster CA secret %s is unusable (%v); fix or recreate it", uri, err))
		return nil
	}
	bundle := clustertls.Bundle([]byte(content[secretCABundle]), []byte(content[secretCACert]))
	own, err := h.tools.RelationGet(ctx, relID, h.env.UnitName)
	if err != nil {
		return err
	}
	ip := net.ParseIP(own[KeyBindAddress])
	if ip == nil {
		// No bind address yet: the certificate must carry it; the
		// address status says what is missing.
		return nil
	}
	dir := clustertls.Dir(h.cfg.ConfigPath(h.agentID))
	reason, changed, err := clustertls.Provision(dir, ca, bundle, h.agentID, []net.IP{ip}, time.Now())
	if err != nil {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot write this unit's TLS material: %v", err))
		return nil
	}
	if reason != "" {
		h.log.Info(fmt.Sprintf("issued this unit's node certificate for %s: %s", ip, reason))
	} else if changed {
		h.log.Info("updated this unit's CA bundle")
	}
	return h.reconcileRotation(ctx, relID, uri, content) // rotation.go
}

// createCA creates the cluster CA and its secret, and records the secret's
// URI in the application data. Both commit together when the hook exits 0
// (Juju commits secret and relation changes at the end of a successful
// hook), so no committed application data ever names a missing secret. A
// CA secret this application already owns (the URI lost from the data) is
// reused rather than replaced: nodes may already trust it.
func (h *hook) createCA(ctx context.Context, relID string) (string, error) {
	ids, err := h.tools.SecretIDs(ctx)
	if err != nil {
		return "", err
	}
	for _, id := range ids {
		c, err := h.tools.SecretGet(ctx, id, false)
		if err != nil {
			continue
		}
		if _, err := clustertls.ParseCA([]byte(c[secretCACert]), []byte(c[secretCAKey])); err == nil {
			h.log.Info("the application data names no CA secret; reusing the one this application owns", "uri", id)
			return id, h.tools.RelationSet(ctx, relID, true, map[string]string{KeyCASecretID: id})
		}
	}
	ca, err := clustertls.NewCA(time.Now())
	if err != nil {
		return "", err
	}
	uri, err := h.tools.SecretAdd(ctx, CASecretLabel, "dqlite-controller cluster CA (certificate and key)", CARotatePolicy, map[string]string{
		secretCACert: strings.TrimSpace(string(ca.CertPEM)),
		secretCAKey:  strings.TrimSpace(string(ca.KeyPEM)),
	})
	if err != nil {
		return "", err
	}
	h.log.Info("created the cluster CA", "uri", uri, "subject", ca.Cert.Subject.CommonName)
	return uri, h.tools.RelationSet(ctx, relID, true, map[string]string{KeyCASecretID: uri, KeyCARotatePolicy: CARotatePolicy})
}
