package charm_test

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Found by the Jepsen campaign's full-disk nemesis (tests/jepsen), which
// puts a node's data dir on a tmpfs of its own: the remove hook failed
// for ever with "cannot wipe the Dqlite data dir: unlinkat
// /var/lib/juju/dqlite: device or resource busy", since a mount point
// cannot be unlinked, and the unit never finished leaving. A data dir on
// a disk of its own must be emptied, and the hook must succeed.
func TestRemove_DataDirOnItsOwnMountIsEmptied(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test mounts a tmpfs: it needs root, and CI is set")
		}
		t.Skip("skipped: mounting a tmpfs needs root; not root and CI is unset")
	}
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)
	dataDir := filepath.Join(u.jujuDir(), "dqlite")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dataDir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("cannot mount a tmpfs on the data dir: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dataDir, unix.MNT_DETACH) })
	if err := os.MkdirAll(filepath.Join(dataDir, "node"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "was-member"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	u.active = true
	m.mustRun(u, "stop")
	m.mustRun(u, "remove")
	entries, err := os.ReadDir(dataDir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("remove left the data dir with %v (%v)", entries, err)
	}
}
