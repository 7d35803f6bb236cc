package dbtx

import (
	"context"
	"time"
)

// Observer is told about every transaction Run runs (for metrics): how
// many attempts it took, how long it took in all, and its final error (nil
// once committed).
type Observer interface {
	Transaction(attempts int, took time.Duration, err error)
}

type observerKey struct{}

// WithObserver returns a context whose transactions are reported to o.
func WithObserver(ctx context.Context, o Observer) context.Context {
	if o == nil {
		return ctx
	}
	return context.WithValue(ctx, observerKey{}, o)
}

func observerFrom(ctx context.Context) Observer {
	o, _ := ctx.Value(observerKey{}).(Observer)
	return o
}
