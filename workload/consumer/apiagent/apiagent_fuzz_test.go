package apiagent_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
)

// FuzzAgentConfig feeds any agent.conf to the reader and the writer: the
// reader must not crash; the writer either refuses and leaves the file
// byte for byte as it was, or writes a file from which the reader gets
// exactly the new list back.
func FuzzAgentConfig(f *testing.F) {
	f.Add([]byte("# format 2.0\ntag: machine-3\napiaddresses:\n- 10.0.0.1:17070\n- 10.0.0.2:17070\n"))
	f.Add([]byte("apiaddresses: [10.0.0.1:17070]\n"))
	f.Add([]byte("apiaddresses: 10.0.0.1:17070\n"))
	f.Add([]byte("apiaddresses:\n  a: b\n"))
	f.Add([]byte("- just\n- a list\n"))
	f.Add([]byte("apiaddresses: &a [x]\nother: *a\n"))
	f.Add([]byte("apiaddresses:\napiaddresses: [y]\n"))
	f.Add([]byte("\xff\xfe"))
	f.Add([]byte(""))
	f.Add([]byte("--- \n...\n"))
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "agent.conf")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		apiagent.ReadAddresses(path)
		want := []string{"10.0.0.9:17070", "[fd00::9]:17070"}
		_, err := apiagent.WriteAddresses(path, want)
		after, rerr := os.ReadFile(path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			if !bytes.Equal(after, content) {
				t.Fatalf("WriteAddresses failed (%v) but changed the file:\n%q\nto\n%q", err, content, after)
			}
			return
		}
		got, err := apiagent.ReadAddresses(path)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("after writing %v, read %v, %v; file:\n%s", want, got, err, after)
		}
	})
}
