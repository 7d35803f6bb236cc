// Package apiagent is the agent side of the API addresses (Juju's
// api-address-updater on a non-controller machine): it keeps the
// `apiaddresses:` list of the agent config file current from a watch of
// the controllers' agent address list, and its `cacert:` current from the
// CA bundle the controllers publish with it (so that the agent follows a
// CA rotation), and connects to a controller by trying those addresses in
// random order with staggered parallel attempts.
package apiagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/consumer/apidial"
)

// Key is the agent config key holding the API addresses (Juju's
// agent.conf format 2.0).
const Key = "apiaddresses"

// CACertKey is the agent config key holding the controllers' CA
// certificate (PEM), as in Juju's agent.conf (juju/juju:
// agent/agent.go, format 2.0 key "cacert"), which the provisioner writes.
const CACertKey = "cacert"

// DefaultRetryDelay is the wait after a failed watch before the next.
const DefaultRetryDelay = time.Second

// ReadAddresses returns the addresses in the agent config file at path
// (nil when the file or the key does not exist).
func ReadAddresses(path string) ([]string, error) {
	doc, err := readDoc(path)
	if err != nil || doc == nil {
		return nil, err
	}
	_, val := findKey(doc.Content[0], Key)
	if val == nil {
		return nil, nil
	}
	var addrs []string
	if err := val.Decode(&addrs); err != nil {
		return nil, fmt.Errorf("cannot read %s in %s: %w", Key, path, err)
	}
	return addrs, nil
}

// WriteAddresses sets the addresses in the agent config file at path,
// keeping every other key (and comment) as it was, with an atomic write
// and only if the list changed. A file that is not a YAML mapping is left
// untouched and reported.
func WriteAddresses(path string, addrs []string) (changed bool, err error) {
	if len(addrs) == 0 {
		return false, fmt.Errorf("cannot write an empty %s list to %s", Key, path)
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, a := range addrs {
		seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: a})
	}
	return setKey(path, Key, seq, func(old *yaml.Node) bool {
		var cur []string
		return old.Decode(&cur) == nil && slices.Equal(cur, addrs)
	})
}

// WriteCACert sets the CA certificate bundle (PEM) in the agent config
// file at path, like WriteAddresses: other keys kept, atomic, only on
// change. The caller decides whether the bundle may be trusted (Updater
// writes only a bundle learnt over a verified connection).
func WriteCACert(path string, pemData []byte) (changed bool, err error) {
	v := strings.TrimSpace(string(pemData)) + "\n"
	if strings.TrimSpace(v) == "" {
		return false, fmt.Errorf("cannot write an empty %s to %s", CACertKey, path)
	}
	// A literal block, as Juju's agent.conf has it.
	node := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Style: yaml.LiteralStyle, Value: v}
	return setKey(path, CACertKey, node, func(old *yaml.Node) bool {
		var cur string
		return old.Decode(&cur) == nil && strings.TrimSpace(cur) == strings.TrimSpace(v)
	})
}

// setKey sets key to val in the agent config file at path unless same
// says the current value is already it; every other key and comment is
// kept, the write is atomic and keeps the file's mode.
func setKey(path, key string, val *yaml.Node, same func(old *yaml.Node) bool) (changed bool, err error) {
	doc, err := readDoc(path)
	if err != nil {
		return false, err
	}
	perm := fs.FileMode(0o600)
	if doc == nil {
		doc = &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	} else if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	root := doc.Content[0]
	k, old := findKey(root, key)
	if old != nil {
		if same(old) {
			return false, nil
		}
		// An anchor on the old value stays on the new one: an alias
		// elsewhere in the file would otherwise point nowhere and the
		// whole file would no longer parse.
		if val.Kind == old.Kind {
			val.Style = old.Style
		}
		val.Anchor = old.Anchor
		*old = *val
	} else {
		k = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}
		root.Content = append(root.Content, k, val)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return false, fmt.Errorf("cannot encode %s: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return false, fmt.Errorf("cannot encode %s: %w", path, err)
	}
	if err := controllerconf.WriteFileAtomic(path, buf.Bytes(), perm); err != nil {
		return false, err
	}
	return true, nil
}

// readDoc parses the file; nil when it does not exist or is empty.
func readDoc(path string) (*yaml.Node, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read agent config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("cannot parse agent config %s: %w", path, err)
	}
	if doc.Kind == 0 {
		return nil, nil // empty file
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("cannot use agent config %s: it is not a YAML mapping", path)
	}
	return &doc, nil
}

// ReadCACert returns the CA certificate (PEM) of the agent config file at
// path; the agent verifies the controllers against it.
func ReadCACert(path string) ([]byte, error) {
	doc, err := readDoc(path)
	if err != nil {
		return nil, err
	}
	if doc == nil {
		return nil, fmt.Errorf("cannot read the CA certificate: agent config %s is missing or empty", path)
	}
	_, val := findKey(doc.Content[0], CACertKey)
	var pem string
	if val == nil || val.Decode(&pem) != nil || pem == "" {
		return nil, fmt.Errorf("agent config %s has no %s: the agent cannot verify the controllers", path, CACertKey)
	}
	return []byte(pem), nil
}

func findKey(m *yaml.Node, name string) (key, val *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == name {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// Update is one answer of the controllers' watch.
type Update struct {
	// Addresses are the agent address list, Version its version (which
	// also moves when CACert does).
	Addresses []string
	Version   string
	// CACert is the CA bundle (PEM) the answering controller trusts, and
	// VerifiedBy the CA that verified that controller's certificate on
	// the connection that carried the answer, checked against the agent
	// config's cacert. A Source sets VerifiedBy only for an answer that
	// came over such a verified connection; the Updater never writes a
	// bundle without it.
	CACert     []byte
	VerifiedBy *x509.Certificate
}

// Source is the controllers' agent address list, watched: Watch returns
// the list once its version differs from lastVersion ("" at first), or an
// error (e.g. the deadline of a long poll).
type Source interface {
	Watch(ctx context.Context, lastVersion string) (Update, error)
}

// Updater keeps the agent config file's address list and CA certificate
// current.
type Updater struct {
	path       string
	src        Source
	log        *slog.Logger
	retryDelay time.Duration
}

// NewUpdater returns an updater for the agent config file at path.
func NewUpdater(path string, src Source, log *slog.Logger) *Updater {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Updater{path: path, src: src, log: log, retryDelay: DefaultRetryDelay}
}

// SetRetryDelay sets the wait after a failed watch (tests shorten it).
func (u *Updater) SetRetryDelay(d time.Duration) { u.retryDelay = d }

// Run watches and updates until ctx is done.
func (u *Updater) Run(ctx context.Context) error {
	version := ""
	for {
		up, err := u.src.Watch(ctx, version)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			u.log.Warn("cannot watch API addresses", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(u.retryDelay):
			}
			continue
		}
		err = u.Apply(up)
		if errors.Is(err, ErrCABundleRefused) {
			// Ask again for the same version after a pause: the next
			// watch starts on a fresh connection, verified against the
			// controller's current certificate (a long poll that a
			// rotation step ended was verified before that step).
			u.log.Warn("not writing the controllers' CA bundle; asking again", "err", err, "retry", u.retryDelay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(u.retryDelay):
			}
			continue
		}
		version = up.Version
		if err != nil {
			u.log.Warn("cannot update the agent config", "err", err)
		}
	}
}

// ErrCABundleRefused is Apply's error for a CA bundle CheckCABundle
// refused (the addresses are applied all the same).
var ErrCABundleRefused = errors.New("CA bundle refused")

// Apply writes the update's addresses and CA bundle to the agent config
// file where they changed. An empty list keeps the existing entries (Juju
// LP#1888453): an agent must never lose every way to reach the
// controllers. A bundle is written only when CheckCABundle accepts it
// (ErrCABundleRefused otherwise).
func (u *Updater) Apply(up Update) error {
	var errs []error
	if len(up.Addresses) == 0 {
		u.log.Warn("empty API address list received; keeping the existing entries")
	} else if changed, err := WriteAddresses(u.path, up.Addresses); err != nil {
		errs = append(errs, err)
	} else if changed {
		u.log.Info("API addresses updated", "addresses", up.Addresses)
	}
	if len(up.CACert) > 0 {
		cas, err := CheckCABundle(up.CACert, up.VerifiedBy)
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("%w: %w", ErrCABundleRefused, err))...)
		}
		if cur, err := ReadCACert(u.path); err == nil && sameCAs(cur, cas) {
			// The same CAs (perhaps in another order): nothing to write.
			return errors.Join(errs...)
		}
		changed, err := WriteCACert(u.path, up.CACert)
		if err != nil {
			errs = append(errs, err)
		} else if changed {
			fps := make([]string, len(cas))
			for i, c := range cas {
				fps[i] = fingerprint(c)
			}
			u.log.Info("CA certificate updated from the controllers", "key", CACertKey, "cas", fps)
		}
	}
	return errors.Join(errs...)
}

// CheckCABundle decides whether an agent may take a CA bundle from a
// controller: it came over a connection whose server certificate verified
// against the agent's current cacert, with verifiedBy the CA that did so
// (nil: the connection was not verified, and the bundle is refused), it
// holds CA certificates only, and it still trusts verifiedBy, so that the
// agent can never lock itself out of the controller that told it (every
// step of a CA rotation keeps the CA the controllers' certificates come
// from in their bundle).
func CheckCABundle(bundle []byte, verifiedBy *x509.Certificate) ([]*x509.Certificate, error) {
	if verifiedBy == nil {
		return nil, errors.New("it did not come over a connection verified against the agent's cacert")
	}
	cas, err := clustertls.ParseCerts(bundle)
	if err != nil {
		return nil, fmt.Errorf("cannot parse it: %w", err)
	}
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("it holds %q, which is not a CA certificate", c.Subject.CommonName)
		}
	}
	if !slices.ContainsFunc(cas, verifiedBy.Equal) {
		return nil, fmt.Errorf("it does not hold the CA (SHA-256 %s) that verified the controller which sent it", fingerprint(verifiedBy))
	}
	return cas, nil
}

// sameCAs reports whether the PEM bundle cur holds exactly the CAs cas,
// in any order.
func sameCAs(cur []byte, cas []*x509.Certificate) bool {
	have, err := clustertls.ParseCerts(cur)
	if err != nil || len(have) != len(cas) {
		return false
	}
	for _, c := range cas {
		if !slices.ContainsFunc(have, c.Equal) {
			return false
		}
	}
	return true
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// DialOptions tune Dial.
type DialOptions struct {
	apidial.Options
	// Shuffle reorders the addresses (default: uniformly at random, to
	// spread agents over controllers).
	Shuffle func([]string)
}

// Dial connects to one of addrs, tried in random order with staggered
// parallel attempts; discard (may be nil) closes connections that won
// too late.
func Dial[T any](ctx context.Context, addrs []string, dial apidial.Func[T], discard func(T), o DialOptions) (T, string, error) {
	addrs = slices.Clone(addrs)
	if o.Shuffle == nil {
		o.Shuffle = func(a []string) { rand.Shuffle(len(a), func(i, j int) { a[i], a[j] = a[j], a[i] }) }
	}
	o.Shuffle(addrs)
	return apidial.Dial(ctx, addrs, dial, discard, o.Options)
}

// DialFromFile is Dial with the addresses of the agent config file.
func DialFromFile[T any](ctx context.Context, path string, dial apidial.Func[T], discard func(T), o DialOptions) (T, string, error) {
	addrs, err := ReadAddresses(path)
	if err != nil {
		var zero T
		return zero, "", err
	}
	return Dial(ctx, addrs, dial, discard, o)
}
