package pack_test

import (
	"archive/zip"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/juju/dqlite-controller/charm/pack"
)

// The charm directory and zip keep file modes and are byte-for-byte
// reproducible.
func TestBuild_KeepsModesAndIsReproducible(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "dispatch.bin")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := func() []pack.File {
		return []pack.File{
			{Name: "metadata.yaml", Data: []byte("name: x\n"), Mode: 0o644},
			{Name: "dispatch", Source: src, Mode: 0o755},
			{Name: "manifest.yaml", Data: []byte(pack.Manifest), Mode: 0o644},
		}
	}
	dir, zipPath := filepath.Join(tmp, "charm"), filepath.Join(tmp, "x.charm")
	if err := pack.Build(dir, zipPath, files()); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "dispatch"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("dispatch in the directory: %v, %v", fi, err)
	}
	first, err := os.ReadFile(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(first), int64(len(first)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{"dispatch": 0o755, "manifest.yaml": 0o644, "metadata.yaml": 0o644}
	if len(zr.File) != len(want) {
		t.Fatalf("zip holds %d files", len(zr.File))
	}
	for _, f := range zr.File {
		if f.Mode().Perm() != want[f.Name] {
			t.Errorf("%s: mode %v, want %v", f.Name, f.Mode().Perm(), want[f.Name])
		}
		if f.Name == "dispatch" {
			rc, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(rc)
			rc.Close()
			if string(data) != "#!/bin/true\n" {
				t.Errorf("dispatch content %q", data)
			}
		}
	}
	// A rebuild replaces the directory and gives the same bytes.
	if err := os.WriteFile(filepath.Join(dir, "stale"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pack.Build(dir, zipPath, files()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "stale")); !os.IsNotExist(err) {
		t.Fatal("a stale file survived the rebuild")
	}
	second, err := os.ReadFile(zipPath)
	if err != nil || !bytes.Equal(first, second) {
		t.Fatalf("rebuild differs (err %v)", err)
	}
}

func TestBuild_MissingSourceFails(t *testing.T) {
	tmp := t.TempDir()
	err := pack.Build(filepath.Join(tmp, "charm"), filepath.Join(tmp, "x.charm"),
		[]pack.File{{Name: "controllerd", Source: filepath.Join(tmp, "nope"), Mode: 0o755}})
	if err == nil {
		t.Fatal("built a charm without its binary")
	}
}
