package backup_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/workload/controlplane/backup"
)

// FuzzList_Prune fills a backup directory with any entries (names split
// on "/", a trailing "@" makes a file instead of a directory) and checks
// that List returns sorted backup directories only and that Prune keeps
// the newest keep of them and every entry that is not a backup.
func FuzzList_Prune(f *testing.F) {
	f.Add("backup-20261201T120000.000Z/backup-20261201T110000.000Z/backup-20261201T130000.000Z", uint8(2))
	f.Add("backup-20261301T120000.000Z/backup-x/backup-/notes@/.tmp-backup-123", uint8(0))
	f.Add("backup-20261201T120000.000Z@/backup-20261201T120000.000Z.bak/lost+found", uint8(1))
	f.Add("backup-20261201T120000Z/backup-20261201T120000.0000Z/ backup-20261201T120000.000Z", uint8(5))
	f.Fuzz(func(t *testing.T, spec string, keep uint8) {
		dir := t.TempDir()
		made := map[string]bool{} // name -> is a directory
		for _, n := range strings.Split(spec, "/") {
			file := strings.HasSuffix(n, "@")
			n = strings.TrimSuffix(n, "@")
			if n == "" || n == "." || n == ".." || strings.ContainsRune(n, 0) || len(n) > 200 || made[n] {
				continue
			}
			p := filepath.Join(dir, n)
			var err error
			if file {
				err = os.WriteFile(p, []byte("x"), 0o600)
			} else {
				err = os.Mkdir(p, 0o700)
			}
			if err == nil {
				made[n] = !file
			}
		}
		names, err := backup.List(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.IsSorted(names) {
			t.Fatalf("List is not sorted: %v", names)
		}
		for _, n := range names {
			if !made[n] || !strings.HasPrefix(n, "backup-") {
				t.Fatalf("List returned %q, which is not a backup directory made here", n)
			}
		}
		if err := backup.Prune(dir, int(keep)); err != nil {
			t.Fatal(err)
		}
		kept := names[max(0, len(names)-int(keep)):]
		for n, isDir := range made {
			_, err := os.Lstat(filepath.Join(dir, n))
			exists := err == nil
			switch {
			case slices.Contains(names, n):
				if exists != slices.Contains(kept, n) {
					t.Fatalf("backup %q exists %v after Prune(%d) of %v", n, exists, keep, names)
				}
			case isDir && strings.HasPrefix(n, ".tmp-backup-"):
				if exists {
					t.Fatalf("interrupted backup %q left by Prune", n)
				}
			case !exists:
				t.Fatalf("Prune removed %q, which is not a backup", n)
			}
		}
	})
}
