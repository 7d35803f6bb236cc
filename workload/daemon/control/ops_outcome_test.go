package control_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// opsBackend answers remove-member with err.
type opsBackend struct {
	backend
	err error
}

func (b opsBackend) ClusterStatus(context.Context) (control.ClusterStatus, error) {
	return control.ClusterStatus{}, nil
}
func (b opsBackend) CreateBackup(context.Context) (control.BackupInfo, error) {
	return control.BackupInfo{}, nil
}
func (b opsBackend) ListBackups(context.Context) ([]control.BackupInfo, error) { return nil, nil }
func (b opsBackend) RemoveMember(context.Context, control.RemoveMemberRequest) (control.RemoveMemberResult, error) {
	return control.RemoveMemberResult{}, b.err
}
func (b opsBackend) RaftInfo(context.Context) (control.RaftInfo, error) {
	return control.RaftInfo{}, nil
}
func (b opsBackend) Recover(context.Context, control.RecoverRequest) (control.RecoverResult, error) {
	return control.RecoverResult{}, nil
}

// A removal the daemon sent to the leader without an answer reaches the
// client as ErrOutcomeUnknown (the CLI's "unknown" exit code); a refused
// one as a plain error with the daemon's message.
func TestRemoveMember_LostAnswerIsOutcomeUnknownRefusalIsNot(t *testing.T) {
	lost := fmt.Errorf("%w: the removal of 10.0.0.2:17666 was sent but not answered", control.ErrOutcomeUnknown)
	dir := serve(t, opsBackend{err: lost})
	_, err := control.NewClient(dir).RemoveMember(context.Background(), control.RemoveMemberRequest{AgentID: "1"})
	if !errors.Is(err, control.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "was sent but not answered") {
		t.Fatalf("lost removal: %v", err)
	}
	dir = serve(t, opsBackend{err: errors.New("cannot remove a member: it is the Dqlite leader")})
	_, err = control.NewClient(dir).RemoveMember(context.Background(), control.RemoveMemberRequest{AgentID: "1"})
	if err == nil || errors.Is(err, control.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "is the Dqlite leader") {
		t.Fatalf("refused removal: %v", err)
	}
}
