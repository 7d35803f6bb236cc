package main_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holderAmong returns the one controller among ids whose status says it
// holds the lease ("" when none or more than one does), asking only
// those: a stopped process's control socket does not answer.
func (c *cluster) holderAmong(ids ...string) (string, string) {
	var held []string
	for _, id := range ids {
		st, err := c.status(id)
		if err == nil && st.Lease != nil && st.Lease.HeldByMe {
			held = append(held, id)
		}
	}
	if len(held) != 1 {
		return "", fmt.Sprintf("held by %v", held)
	}
	return held[0], ""
}

// TestLease_HolderPausedDuringBackupIsFencedOut: the lease holder is
// stopped (SIGSTOP) in the middle of a backup, after writing the files
// and before recording it, for longer than the lease. Another controller
// takes the lease and takes and records the backup. When the paused
// holder resumes, its late record must be refused by the database (the
// lease tenure it was started under is over), so exactly one backup is
// recorded.
func TestLease_HolderPausedDuringBackupIsFencedOut(t *testing.T) {
	const recordDelay = 3 * time.Second
	c := newCluster(t)
	// One backup is due at start, then none for an hour.
	c.args = []string{"--backup-interval", "1h", "--test-backup-record-delay", recordDelay.String()}
	c.form(3)
	first := c.waitOneHolder("")
	paused := c.node(first)
	c.waitFor("the holder to be half-way through its backup", func() (bool, string) {
		_, ok := paused.lineAfter(time.Time{}, "waiting before recording it (test hook)")
		return ok, "no test-hook line yet"
	})
	if err := paused.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			paused.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()

	var others []string
	for _, id := range ids(3) {
		if id != first {
			others = append(others, id)
		}
	}
	var second string
	c.waitFor("another controller to hold the lease", func() (bool, string) {
		var why string
		second, why = c.holderAmong(others...)
		return second != "", why
	})
	c.waitFor("the new holder to record the backup", func() (bool, string) {
		recs, err := c.backupRecords(second)
		return err == nil && countBy(recs, second) == 1, fmt.Sprint(recs, err)
	})
	// Well past the paused holder's expiry (6 s lease, default timing).
	if d := time.Since(stoppedAt); d < 8*time.Second {
		time.Sleep(8*time.Second - d)
	}
	resumedAt := time.Now()
	resume()

	// The paused holder wakes up with its backup written, finds its
	// local deadline passed and tries to record the backup.
	c.waitFor("the resumed controller to drop the lease", func() (bool, string) {
		_, ok := paused.lineAfter(resumedAt, "singular lease no longer held")
		return ok, "still holding"
	})
	c.waitFor("the resumed controller to see the new holder", func() (bool, string) {
		st, err := c.status(first)
		return err == nil && st.Lease != nil && !st.Lease.HeldByMe && st.Lease.Holder == "controller-"+second,
			fmt.Sprint(st.Lease, err)
	})
	// A late write lands within a transaction's deadline; give it that
	// long (the record transaction of a backup has at most the backup's
	// own timeout, but its first attempt is immediate).
	time.Sleep(5 * time.Second)
	var outcome []string
	for _, l := range strings.Split(paused.logs(), "\n") {
		if strings.Contains(l, "component=backup") && !strings.Contains(l, "test hook") {
			outcome = append(outcome, l)
		}
	}
	t.Logf("resumed holder's backup log: %q", outcome)
	recs, err := c.backupRecords(second)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].controller != second {
		t.Fatalf("backups recorded: %v; want exactly one, by the new holder %s (paused holder %s resumed at %s: %s)",
			recs, second, first, resumedAt.Format(time.RFC3339Nano), outcome)
	}
	refused := false
	for _, l := range outcome {
		refused = refused || strings.Contains(l, "refused by the lease fence")
	}
	if !refused {
		t.Fatalf("the paused holder's late record was not refused by the lease fence; its backup log: %q", outcome)
	}
}
