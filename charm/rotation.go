package charm

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/clustertls"
)

// CA rotation, driven by the leader through the CA secret's content and the
// peer relation (the steps and their rule: package peers, rotation.go).
//
// A rotation starts from the rotate-ca action or from secret-rotate (the
// CA secret is created with rotate policy CARotatePolicy, so Juju asks the
// leader once a year). The leader creates the new CA and writes step 1:
//
//	step 1: ca-cert/ca-key the old CA, ca-bundle the new CA's certificate,
//	        ca-next-key the new CA's key: every unit trusts both and keeps
//	        its certificate;
//	step 2: ca-cert/ca-key the new CA, ca-bundle the old CA's certificate:
//	        every unit re-issues its certificate from the new CA (Provision
//	        does when the certificate is not the issuing CA's), trusting
//	        both;
//	step 3: ca-cert/ca-key the new CA alone: every unit drops the old CA.
//
// Old revisions are pruned: Juju runs secret-remove on the leader for each
// revision no unit tracks any more, and the leader removes it
// (pruneCARevision), so the old CA's key does not outlive the rotation in
// the secret's history.
//
// Each secret revision is written with the application data KeyCARotation
// in the same hook, so they commit together and every unit runs a hook
// (relation-changed for the application data, secret-changed for the
// secret). Every unit reports what its TLS directory holds (KeyCATrust, read
// back with clustertls.Load, the check controllerd makes before it uses the
// files; controllerd reloads them within moments through inotify, so no
// restart is needed). The leader moves on only when every unit in the
// relation reports the step done. Everything the leader decides comes from
// the secret and the relation, so a new leader, or a leader whose hook
// failed (nothing of it committed), resumes where the data says.

const (
	// ActionRotateCA starts a CA rotation.
	ActionRotateCA = "rotate-ca"
	// CARotatePolicy is the CA secret's rotate policy.
	CARotatePolicy = "yearly"
	// KeyCARotatePolicy is the application data key recording the rotate
	// policy the leader gave the CA secret (written in the same hook as
	// secret-add --rotate or secret-set --rotate, so they commit
	// together). A CA secret created before the policy existed has none:
	// the leader sets it once, in its next hook (upgrade-charm, say).
	KeyCARotatePolicy = "ca-rotate-policy"
	// KeyLeaderUnit is the application data key naming the leader (as of
	// its last hook), so that an action run elsewhere can say where to run.
	KeyLeaderUnit = "leader-unit"
	// secretCANextKey is the new CA's key during step 1.
	secretCANextKey = "ca-next-key"

	hookSecretRotate = "secret-rotate"
	hookSecretRemove = "secret-remove"
)

// fingerprint is the SHA-256 of a certificate's DER, in hex.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// caSecret is the CA secret's content, parsed.
type caSecret struct {
	issuing *clustertls.CA
	// others are ca-bundle's certificates other than ca-cert.
	others []*x509.Certificate
	// next is the new CA of step 1 (ca-next-key and its certificate in
	// ca-bundle), nil otherwise.
	next *clustertls.CA
}

func parseCASecret(content map[string]string) (*caSecret, error) {
	issuing, err := clustertls.ParseCA([]byte(content[secretCACert]), []byte(content[secretCAKey]))
	if err != nil {
		return nil, err
	}
	s := &caSecret{issuing: issuing}
	if b := strings.TrimSpace(content[secretCABundle]); b != "" {
		certs, err := clustertls.ParseCerts([]byte(b))
		if err != nil {
			return nil, fmt.Errorf("cannot parse %s: %w", secretCABundle, err)
		}
		for _, c := range certs {
			if !c.Equal(issuing.Cert) {
				s.others = append(s.others, c)
			}
		}
	}
	if k := strings.TrimSpace(content[secretCANextKey]); k != "" {
		for _, c := range s.others {
			if next, err := clustertls.ParseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), []byte(k)); err == nil {
				s.next = next
			}
		}
		if s.next == nil {
			return nil, fmt.Errorf("%s matches no CA in %s", secretCANextKey, secretCABundle)
		}
	}
	return s, nil
}

func (s *caSecret) content() peers.CAContent {
	c := peers.CAContent{Issuing: fingerprint(s.issuing.Cert)}
	for _, o := range s.others {
		c.Others = append(c.Others, fingerprint(o))
	}
	if s.next != nil {
		c.Next = fingerprint(s.next.Cert)
	}
	return c
}

// trustReport reads back what dir holds, as controllerd would load it.
func trustReport(dir string, now time.Time) (peers.CATrust, error) {
	m, err := clustertls.Load(dir, now)
	if err != nil {
		return peers.CATrust{}, err
	}
	var t peers.CATrust
	for _, ca := range m.CAs {
		fp := fingerprint(ca)
		t.Trusts = append(t.Trusts, fp)
		if m.Cert.Leaf.CheckSignatureFrom(ca) == nil {
			t.Issuer = fp
		}
	}
	slices.Sort(t.Trusts)
	return t, nil
}

// reconcileRotation runs after this unit's TLS material is current: it
// publishes this unit's report, and on the leader drives the rotation.
func (h *hook) reconcileRotation(ctx context.Context, relID, uri string, content map[string]string) error {
	own, err := trustReport(clustertls.Dir(h.cfg.ConfigPath(h.agentID)), time.Now())
	ownValue := ""
	if err != nil {
		h.log.Warn("cannot read back this unit's TLS material", "err", err)
	} else {
		ownValue = own.Encode()
		mine, err := h.tools.RelationGet(ctx, relID, h.env.UnitName)
		if err != nil {
			return err
		}
		if mine[peers.KeyCATrust] != ownValue {
			if err := h.tools.RelationSet(ctx, relID, false, map[string]string{peers.KeyCATrust: ownValue}); err != nil {
				return err
			}
		}
	}
	app, err := h.tools.RelationGetApp(ctx, relID, h.env.AppName())
	if err != nil {
		return err
	}
	appRot := peers.ParseRotation(app[peers.KeyCARotation])
	leader, err := h.tools.IsLeader(ctx)
	if err != nil {
		return err
	}
	if !leader {
		if appRot.Step != 0 {
			h.activeNotes = append(h.activeNotes, fmt.Sprintf("rotating the cluster CA: step %d/%d", appRot.Step, peers.Steps))
		}
		return nil
	}
	if app[KeyLeaderUnit] != h.env.UnitName {
		if err := h.tools.RelationSet(ctx, relID, true, map[string]string{KeyLeaderUnit: h.env.UnitName}); err != nil {
			return err
		}
	}
	if app[KeyCARotatePolicy] != CARotatePolicy {
		if err := h.setRotatePolicy(ctx, relID, uri); err != nil {
			return rotationToolError(h, err)
		}
	}
	sec, err := parseCASecret(content)
	if err != nil {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("the cluster CA secret %s is unusable (%v); fix or recreate it", uri, err))
		return nil
	}
	rot := peers.CurrentRotation(sec.content(), appRot)
	if rot.Step == 0 {
		if h.env.Hook == hookSecretRotate && h.env.SecretID == uri {
			started, err := startRotation(ctx, h.tools, relID, uri, sec)
			if err != nil {
				return rotationToolError(h, err)
			}
			h.log.Info("the CA secret's rotation is due: started rotating the cluster CA", "from", started.From, "to", started.To)
			h.status.add(hooktools.StatusMaintenance, started.WaitingMessage(nil))
			return nil
		}
		if appRot.Step != 0 {
			return h.tools.RelationSet(ctx, relID, true, map[string]string{peers.KeyCARotation: ""})
		}
		return nil
	}
	if rot != appRot {
		if err := h.tools.RelationSet(ctx, relID, true, map[string]string{peers.KeyCARotation: rot.Encode()}); err != nil {
			return err
		}
	}
	units, reports, err := h.rotationReports(ctx, relID, ownValue)
	if err != nil {
		return err
	}
	if waiting := rot.Waiting(units, reports); len(waiting) > 0 {
		h.status.add(hooktools.StatusMaintenance, rot.WaitingMessage(waiting))
		return nil
	}
	next, err := advanceRotation(ctx, h.tools, relID, uri, rot, sec)
	if err != nil {
		return rotationToolError(h, err)
	}
	if next.Step == 0 {
		h.log.Info("rotated the cluster CA: every unit trusts and uses the new CA only", "ca", rot.To)
		return nil
	}
	h.log.Info("CA rotation: every unit finished a step", "done", rot.Step, "next", next.Step)
	h.status.add(hooktools.StatusMaintenance, next.WaitingMessage(next.Waiting(units, reports)))
	return nil
}

// setRotatePolicy gives the CA secret the rotate policy CARotatePolicy
// (a secret created before the policy existed has none, so Juju would
// never ask for a rotation) and records it in the application data, in
// the same hook, so that it is done once.
func (h *hook) setRotatePolicy(ctx context.Context, relID, uri string) error {
	if err := h.tools.SecretSetRotate(ctx, uri, CARotatePolicy); err != nil {
		return err
	}
	if err := h.tools.RelationSet(ctx, relID, true, map[string]string{KeyCARotatePolicy: CARotatePolicy}); err != nil {
		return err
	}
	h.log.Info("set the cluster CA secret's rotate policy", "uri", uri, "policy", CARotatePolicy)
	return nil
}

// pruneCARevision answers secret-remove for the CA secret on the leader.
// Juju runs it on the owner (the leader) for a revision that is not the
// latest and that no unit tracks any more (every unit reads the CA secret
// with --refresh, so every revision before the latest becomes obsolete
// once each unit has run a hook after it): nothing can read it again, and
// every revision written before step 2 of a rotation holds the old CA's
// key. So the leader removes the revision; a revision already gone is
// nothing to do.
func (h *hook) pruneCARevision(ctx context.Context, uri string) error {
	if h.env.Hook != hookSecretRemove || h.env.SecretID != uri || h.env.SecretRevision <= 0 {
		return nil
	}
	leader, err := h.tools.IsLeader(ctx)
	if err != nil {
		return err
	}
	if !leader {
		h.log.Info("not the leader: leaving the obsolete CA secret revision to the leader", "revision", h.env.SecretRevision)
		return nil
	}
	err = h.tools.SecretRemoveRevision(ctx, uri, h.env.SecretRevision)
	var exit *hooktools.ExitError
	if errors.As(err, &exit) && strings.Contains(exit.Stderr, "not found") {
		h.log.Info("the obsolete CA secret revision is already gone", "revision", h.env.SecretRevision)
		return nil
	}
	if err != nil {
		return rotationToolError(h, err)
	}
	h.log.Info("removed an obsolete revision of the cluster CA secret", "uri", uri, "revision", h.env.SecretRevision)
	return nil
}

// rotationToolError keeps a lost leadership (the write is refused, nothing
// commits) from failing the hook: the next leader resumes.
func rotationToolError(h *hook, err error) error {
	var exit *hooktools.ExitError
	if errors.As(err, &exit) && strings.Contains(exit.Stderr, "not the leader") {
		h.log.Info("lost leadership while driving the CA rotation; the new leader resumes it")
		return nil
	}
	return err
}

// rotationReports are every unit in the relation (this one included) and
// their KeyCATrust values (this unit's as this hook computed it).
func (h *hook) rotationReports(ctx context.Context, relID, own string) ([]string, map[string]string, error) {
	others, err := h.tools.RelationList(ctx, relID)
	if err != nil {
		return nil, nil, err
	}
	units := append([]string{h.env.UnitName}, others...)
	reports := map[string]string{h.env.UnitName: own}
	for _, u := range others {
		data, err := h.tools.RelationGet(ctx, relID, u)
		if err != nil {
			return nil, nil, err
		}
		reports[u] = data[peers.KeyCATrust]
	}
	return units, reports, nil
}

// startRotation creates the new CA and writes step 1.
func startRotation(ctx context.Context, tools *hooktools.Client, relID, uri string, sec *caSecret) (peers.Rotation, error) {
	next, err := clustertls.NewCA(time.Now())
	if err != nil {
		return peers.Rotation{}, err
	}
	rot := peers.Rotation{Step: peers.StepTrustNew, From: fingerprint(sec.issuing.Cert), To: fingerprint(next.Cert)}
	content := map[string]string{
		secretCACert:    pemString(sec.issuing.CertPEM),
		secretCAKey:     pemString(sec.issuing.KeyPEM),
		secretCABundle:  pemString(next.CertPEM),
		secretCANextKey: pemString(next.KeyPEM),
	}
	if err := tools.SecretSet(ctx, uri, content); err != nil {
		return peers.Rotation{}, err
	}
	return rot, tools.RelationSet(ctx, relID, true, map[string]string{peers.KeyCARotation: rot.Encode()})
}

// advanceRotation writes the step after rot (every unit has done rot).
func advanceRotation(ctx context.Context, tools *hooktools.Client, relID, uri string, rot peers.Rotation, sec *caSecret) (peers.Rotation, error) {
	next := rot.Next()
	var content map[string]string
	switch rot.Step {
	case peers.StepTrustNew:
		content = map[string]string{
			secretCACert:   pemString(sec.next.CertPEM),
			secretCAKey:    pemString(sec.next.KeyPEM),
			secretCABundle: pemString(sec.issuing.CertPEM),
		}
	case peers.StepReissue:
		content = map[string]string{
			secretCACert: pemString(sec.issuing.CertPEM),
			secretCAKey:  pemString(sec.issuing.KeyPEM),
		}
	}
	if content != nil {
		if err := tools.SecretSet(ctx, uri, content); err != nil {
			return peers.Rotation{}, err
		}
	}
	return next, tools.RelationSet(ctx, relID, true, map[string]string{peers.KeyCARotation: next.Encode()})
}

func pemString(p []byte) string { return strings.TrimSpace(string(p)) }

// rotateCA is the rotate-ca action: on the leader, start a rotation.
func (a *action) rotateCA(ctx context.Context) (map[string]string, string) {
	ids, err := a.tools.RelationIDs(ctx, Endpoint)
	if err != nil || len(ids) == 0 {
		return nil, fmt.Sprintf("cannot find the db-cluster relation (%v); retry once the unit has joined it", err)
	}
	relID := ids[0]
	app, err := a.tools.RelationGetApp(ctx, relID, a.env.AppName())
	if err != nil {
		return nil, fmt.Sprintf("cannot read the application data: %v", err)
	}
	leader, err := a.tools.IsLeader(ctx)
	if err != nil {
		return nil, fmt.Sprintf("cannot tell whether this unit is the leader: %v", err)
	}
	if !leader {
		where := a.env.AppName() + "/leader"
		if l := app[KeyLeaderUnit]; l != "" && l != a.env.UnitName {
			where = l + " (the leader as of its last hook) or " + where
		}
		return nil, fmt.Sprintf("cannot rotate the cluster CA on %s: only the leader drives a rotation; run rotate-ca on %s", a.env.UnitName, where)
	}
	uri := app[KeyCASecretID]
	if uri == "" {
		return nil, "there is no cluster CA yet; the leader creates it in its next hook"
	}
	content, err := a.tools.SecretGet(ctx, uri, true)
	if err != nil {
		return nil, fmt.Sprintf("cannot read the cluster CA secret %s: %v", uri, err)
	}
	sec, err := parseCASecret(content)
	if err != nil {
		return nil, fmt.Sprintf("the cluster CA secret %s is unusable (%v); fix or recreate it", uri, err)
	}
	if cur := peers.CurrentRotation(sec.content(), peers.ParseRotation(app[peers.KeyCARotation])); cur.Step != 0 {
		return nil, fmt.Sprintf("a CA rotation is already in progress (step %d/%d); it continues by itself, juju status on the leader shows which units it waits for", cur.Step, peers.Steps)
	}
	rot, err := startRotation(ctx, a.tools, relID, uri, sec)
	if err != nil {
		return nil, fmt.Sprintf("cannot start the CA rotation: %v", err)
	}
	return map[string]string{
		"from": rot.From, "to": rot.To,
		"summary": fmt.Sprintf("started rotating the cluster CA (SHA-256 %s… to %s…): step 1/%d, every unit trusts the new CA; then every unit re-issues its certificate, then the old CA is dropped. It continues by itself; juju status on the leader shows the step and the units it waits for",
			rot.From[:12], rot.To[:12], peers.Steps),
	}, ""
}
