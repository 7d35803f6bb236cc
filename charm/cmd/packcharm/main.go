// Command packcharm builds the charm directory and .charm archive from the
// built binaries, without charmcraft:
//
//	packcharm -bin build/bin -out build/charm -zip build/dqlite-controller.charm
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/juju/dqlite-controller/charm/pack"
)

func main() {
	bin := flag.String("bin", "build/bin", "directory holding the dispatch and controllerd binaries")
	src := flag.String("src", ".", "project directory holding metadata.yaml and config.yaml")
	out := flag.String("out", "build/charm", "unpacked charm directory to (re)create")
	zipPath := flag.String("zip", "build/dqlite-controller.charm", "charm archive to write")
	flag.Parse()
	files := []pack.File{
		{Name: "dispatch", Source: filepath.Join(*bin, "dispatch"), Mode: 0o755},
		{Name: "controllerd", Source: filepath.Join(*bin, "controllerd"), Mode: 0o755},
		{Name: "metadata.yaml", Source: filepath.Join(*src, "metadata.yaml"), Mode: 0o644},
		{Name: "config.yaml", Source: filepath.Join(*src, "config.yaml"), Mode: 0o644},
		{Name: "actions.yaml", Source: filepath.Join(*src, "actions.yaml"), Mode: 0o644},
		{Name: "src/prometheus_alert_rules/controllerd.rules", Source: filepath.Join(*src, "charm", "cos", "alert_rules.yaml"), Mode: 0o644},
		{Name: "src/grafana_dashboards/controllerd.json", Source: filepath.Join(*src, "charm", "cos", "dashboard.json"), Mode: 0o644},
		{Name: "README.md", Source: filepath.Join(*src, "README.md"), Mode: 0o644},
		{Name: "manifest.yaml", Data: []byte(pack.Manifest), Mode: 0o644},
	}
	if err := pack.Build(*out, *zipPath, files); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}
}
