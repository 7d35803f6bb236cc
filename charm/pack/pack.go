// Package pack assembles the built charm: the unpacked directory Juju's
// unit agent would see and the .charm zip that `juju deploy` accepts.
package pack

import (
	"archive/zip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Manifest is the manifest.yaml of the charm: without bases, Juju refuses to
// deploy ("charm does not define any bases").
const Manifest = `charmcraft-version: 3.0.0
charmcraft-started-at: '2026-01-01T00:00:00+00:00'
bases:
- name: ubuntu
  channel: '24.04'
  architectures:
  - amd64
analysis:
  attributes:
  - name: language
    result: unknown
  - name: framework
    result: unknown
`

// File is one file of the charm.
type File struct {
	// Name is the path inside the charm.
	Name string
	// Source is the file to copy; empty when Data is used.
	Source string
	// Data is the content when there is no Source.
	Data []byte
	// Mode is the file mode, kept in the directory and in the zip.
	Mode fs.FileMode
}

// Build writes files into dir (replacing it) and zips the same files into
// zipPath with their modes, in name order and with a fixed timestamp so that
// the same inputs give the same archive.
func Build(dir, zipPath string, files []File) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("cannot clear %s: %w", dir, err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	for _, f := range files {
		data := f.Data
		if f.Source != "" {
			var err error
			if data, err = os.ReadFile(f.Source); err != nil {
				return fmt.Errorf("cannot read charm file: %w", err)
			}
		}
		dst := filepath.Join(dir, f.Name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("cannot create charm directory: %w", err)
		}
		if err := os.WriteFile(dst, data, f.Mode); err != nil {
			return fmt.Errorf("cannot write charm file: %w", err)
		}
		if err := os.Chmod(dst, f.Mode); err != nil {
			return fmt.Errorf("cannot set mode of charm file: %w", err)
		}
	}
	return zipDir(dir, zipPath, files)
}

func zipDir(dir, zipPath string, files []File) (err error) {
	tmp := zipPath + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("cannot create charm archive: %w", err)
	}
	defer func() {
		if err != nil {
			out.Close()
			os.Remove(tmp)
		}
	}()
	zw := zip.NewWriter(out)
	stamp := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range files {
		hdr := &zip.FileHeader{Name: f.Name, Method: zip.Deflate, Modified: stamp}
		hdr.SetMode(f.Mode)
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			return fmt.Errorf("cannot add %s to charm archive: %w", f.Name, err)
		}
		src, err := os.Open(filepath.Join(dir, f.Name))
		if err != nil {
			return fmt.Errorf("cannot add %s to charm archive: %w", f.Name, err)
		}
		_, err = io.Copy(w, src)
		src.Close()
		if err != nil {
			return fmt.Errorf("cannot add %s to charm archive: %w", f.Name, err)
		}
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("cannot finish charm archive: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("cannot finish charm archive: %w", err)
	}
	return os.Rename(tmp, zipPath)
}
