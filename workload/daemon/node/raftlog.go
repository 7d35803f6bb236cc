package node

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
)

// RaftPosition is where a node's Raft log ends: the term and index of its
// last entry. Of two nodes, the one with the higher term, then the higher
// index, has the more up-to-date log (Raft's election rule; LXD's `lxd
// cluster edit` and go-dqlite's shell give operators the same advice for
// choosing the node to recover from).
type RaftPosition struct {
	Term  uint64 `json:"term" yaml:"term"`
	Index uint64 `json:"index" yaml:"index"`
}

// Newer reports whether p is more up to date than o.
func (p RaftPosition) Newer(o RaftPosition) bool {
	if p.Term != o.Term {
		return p.Term > o.Term
	}
	return p.Index > o.Index
}

func (p RaftPosition) String() string { return fmt.Sprintf("term %d, index %d", p.Term, p.Index) }

var (
	closedSegment = regexp.MustCompile(`^(\d{16})-(\d{16})$`)
	openSegment   = regexp.MustCompile(`^open-(\d+)$`)
	snapshotMeta  = regexp.MustCompile(`^snapshot-(\d+)-(\d+)-(\d+)\.meta$`)
)

// readRaftPosition reads the position of the last entry of the Raft log in
// a node dir, from libraft's on-disk format (canonical/raft src/uv_encoding.h):
// closed segments are named <first>-<last> index; open segments open-<n>
// hold entries after the last closed one; each segment starts with an 8-byte
// format version followed by batches of [crc32 header][crc32 data]
// [n (8 bytes)][n entry headers: term (8), type (1), unused (3), length (4)]
// [data], little endian; a zero count or a truncated batch ends a
// preallocated or torn open segment. A log compacted away leaves the last
// snapshot's term and index. It only reads files, so it also works on the
// dir of a running node (an append in flight is not counted).
func readRaftPosition(nodeDir string) (RaftPosition, error) {
	entries, err := os.ReadDir(nodeDir)
	if err != nil {
		return RaftPosition{}, fmt.Errorf("cannot read the node dir: %w", err)
	}
	var pos RaftPosition
	var lastClosed uint64
	var lastClosedName string
	type open struct {
		n    uint64
		name string
	}
	var opens []open
	for _, e := range entries {
		name := e.Name()
		if m := closedSegment.FindStringSubmatch(name); m != nil {
			if end, _ := strconv.ParseUint(m[2], 10, 64); end >= lastClosed {
				lastClosed, lastClosedName = end, name
			}
		} else if m := openSegment.FindStringSubmatch(name); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			opens = append(opens, open{n, name})
		} else if m := snapshotMeta.FindStringSubmatch(name); m != nil {
			t, _ := strconv.ParseUint(m[1], 10, 64)
			i, _ := strconv.ParseUint(m[2], 10, 64)
			if snap := (RaftPosition{Term: t, Index: i}); snap.Index > pos.Index {
				pos = snap
			}
		}
	}
	if lastClosedName != "" {
		_, term, err := scanSegment(filepath.Join(nodeDir, lastClosedName))
		if err != nil {
			return RaftPosition{}, err
		}
		if term != 0 && lastClosed >= pos.Index {
			pos = RaftPosition{Term: term, Index: lastClosed}
		}
	}
	sort.Slice(opens, func(i, j int) bool { return opens[i].n < opens[j].n })
	for _, o := range opens {
		n, term, err := scanSegment(filepath.Join(nodeDir, o.name))
		if err != nil {
			return RaftPosition{}, err
		}
		if n > 0 {
			pos = RaftPosition{Term: term, Index: pos.Index + n}
		}
	}
	return pos, nil
}

// scanSegment counts the entries of a segment file and returns the term of
// the last one.
func scanSegment(path string) (n, lastTerm uint64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read Raft segment: %w", err)
	}
	if len(data) < 8 {
		return 0, 0, nil
	}
	if v := binary.LittleEndian.Uint64(data); v != 1 {
		if v == 0 {
			return 0, 0, nil // preallocated, never written
		}
		return 0, 0, fmt.Errorf("cannot read Raft segment %s: unknown format version %d", filepath.Base(path), v)
	}
	off := 8
	for {
		if off+16 > len(data) {
			return n, lastTerm, nil
		}
		count := binary.LittleEndian.Uint64(data[off+8:])
		if count == 0 || count > uint64(len(data)-off)/16 {
			return n, lastTerm, nil
		}
		hdr := off + 16
		if hdr+int(count)*16 > len(data) {
			return n, lastTerm, nil
		}
		size := 0
		var term uint64
		for i := 0; i < int(count); i++ {
			h := data[hdr+i*16:]
			term = binary.LittleEndian.Uint64(h)
			size += int(binary.LittleEndian.Uint32(h[12:]))
		}
		end := hdr + int(count)*16 + size
		if end > len(data) || size < 0 {
			return n, lastTerm, nil // torn: the batch never completed
		}
		n += count
		lastTerm = term
		off = end
	}
}
