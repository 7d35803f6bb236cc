package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/canonical/go-dqlite/client"
	"github.com/ghodss/yaml"
	"github.com/google/renameio"
)

// Layout of the data dir: the Dqlite node's files live in a sub-directory so
// that wiping the node never touches the control socket or the marker.
const (
	nodeDirName  = "node"
	markerName   = "was-member"
	removedName  = "removed"
	hintsName    = "join-hints"
	infoFile     = "info.yaml"
	clusterFile  = "cluster.yaml"
	databaseName = "controller"
)

// readInfo reads the node identity go-dqlite keeps in info.yaml; ok is
// false when the node dir holds no node yet.
func readInfo(nodeDir string) (info client.NodeInfo, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(nodeDir, infoFile))
	if errors.Is(err, os.ErrNotExist) {
		return info, false, nil
	}
	if err != nil {
		return info, false, fmt.Errorf("cannot read node info: %w", err)
	}
	if err := yaml.Unmarshal(data, &info); err != nil {
		return info, false, fmt.Errorf("cannot parse node info: %w", err)
	}
	return info, true, nil
}

// writeInfo rewrites info.yaml in go-dqlite's own format.
func writeInfo(nodeDir string, info client.NodeInfo) error {
	data, err := yaml.Marshal(info)
	if err != nil {
		return fmt.Errorf("cannot encode node info: %w", err)
	}
	if err := renameio.WriteFile(filepath.Join(nodeDir, infoFile), data, 0o600); err != nil {
		return fmt.Errorf("cannot write node info: %w", err)
	}
	return nil
}

// readStore returns the nodes listed in cluster.yaml (empty when missing).
func readStore(nodeDir string) ([]client.NodeInfo, error) {
	store, err := client.NewYamlNodeStore(filepath.Join(nodeDir, clusterFile))
	if err != nil {
		return nil, fmt.Errorf("cannot read cluster.yaml: %w", err)
	}
	return store.Get(context.Background())
}

// writeStore replaces cluster.yaml: ReconfigureMembershipExt leaves it
// stale (canonical/go-dqlite#311), and go-dqlite dials the nodes it lists.
func writeStore(nodeDir string, nodes []client.NodeInfo) error {
	store, err := client.NewYamlNodeStore(filepath.Join(nodeDir, clusterFile))
	if err != nil {
		return fmt.Errorf("cannot open cluster.yaml: %w", err)
	}
	if err := store.Set(context.Background(), nodes); err != nil {
		return fmt.Errorf("cannot write cluster.yaml: %w", err)
	}
	return nil
}

// readJoinHints returns the addresses kept by writeJoinHints (none when
// the file is missing or unreadable: they only add places to ask).
func readJoinHints(dataDir string) []string {
	data, err := os.ReadFile(filepath.Join(dataDir, hintsName))
	if err != nil {
		return nil
	}
	var hints []string
	if json.Unmarshal(data, &hints) != nil {
		return nil
	}
	return hints
}

// writeJoinHints keeps the addresses of the members a removed node last
// knew outside its node dir, which is wiped, so that a restart before it
// rejoins still knows where they serve; nil removes the file.
func writeJoinHints(dataDir string, hints []string) error {
	path := filepath.Join(dataDir, hintsName)
	if hints == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cannot remove the join hints: %w", err)
		}
		return nil
	}
	data, err := json.Marshal(hints)
	if err != nil {
		return fmt.Errorf("cannot encode the join hints: %w", err)
	}
	if err := renameio.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("cannot write the join hints: %w", err)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
