// Package testwait is the one polling helper of the workload's tests: wait
// until a condition holds, with a deadline generous enough for a loaded
// machine. The deadline only bounds a hung test; it never asserts speed.
package testwait

import (
	"testing"
	"time"
)

// Patience is how long For waits before it fails the test.
const Patience = 30 * time.Second

// interval is how often For polls.
const interval = 5 * time.Millisecond

// For polls cond until it holds, failing the test with "timed out waiting
// for <what>" once Patience has passed.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
}
