package apiserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
)

// CABundlePoll is how often a long poll looks at the CA bundle (a read of
// the node's loaded TLS material, in memory): the bundle has no change
// feed, and during step 1 of a CA rotation the agents must learn the new
// CA before the controllers move to certificates of it.
const CABundlePoll = 200 * time.Millisecond

// withCABundle adds the CA bundle the node trusts to the address lists
// (apiwire.Lists.CABundle), with a version that moves when either the
// lists or the bundle change.
type withCABundle struct {
	l      Lister
	bundle func() []byte
}

// combine returns the lists carrying bundle, their version suffixed with
// the bundle's digest (unchanged when there is no bundle: a node without
// TLS).
func combine(l apiwire.Lists, bundle []byte) apiwire.Lists {
	if len(bundle) == 0 {
		return l
	}
	sum := sha256.Sum256(bundle)
	l.CABundle = string(bundle)
	l.Version += "-ca" + hex.EncodeToString(sum[:8])
	return l
}

func (w withCABundle) Current() (apiwire.Lists, bool) {
	cur, ok := w.l.Current()
	if !ok {
		return cur, false
	}
	return combine(cur, w.bundle()), true
}

// Wait returns the lists as soon as their combined version differs from
// version: when the address lists change (the inner Lister's wait) or the
// bundle does (looked at every CABundlePoll).
func (w withCABundle) Wait(ctx context.Context, version string) (apiwire.Lists, error) {
	for {
		bundle := w.bundle()
		inner, ok := w.l.Current()
		if ok {
			if cur := combine(inner, bundle); cur.Version != version {
				return cur, nil
			}
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			t := time.NewTicker(CABundlePoll)
			defer t.Stop()
			for {
				select {
				case <-wctx.Done():
					return
				case <-t.C:
					if !bytes.Equal(w.bundle(), bundle) {
						cancel()
						return
					}
				}
			}
		}()
		// The inner version as of this pass ("" before the first read,
		// which the inner Lister answers once it has one).
		l, err := w.l.Wait(wctx, inner.Version)
		cancel()
		if ctx.Err() != nil {
			if l.Version == "" {
				return l, err
			}
			return combine(l, w.bundle()), err
		}
		// The lists or the bundle changed: compare again.
	}
}
