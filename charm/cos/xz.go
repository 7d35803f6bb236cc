package cos

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// storeXZ wraps data in an .xz stream whose LZMA2 chunks are all stored
// (uncompressed): what Python's lzma.decompress, which the cos_agent
// library uses for dashboards (canonical/grafana-agent-operator:
// lib/charms/grafana_agent/v0/cos_agent.py GrafanaDashboard), reads, with
// the Go standard library alone. The layout is the .xz file format 1.1.0
// (tukaani.org/xz/xz-file-format.txt): stream header, one block (LZMA2
// filter), CRC32 check, index, stream footer.
func storeXZ(data []byte) []byte {
	var out bytes.Buffer
	le32 := func(v uint32) { binary.Write(&out, binary.LittleEndian, v) }
	flags := []byte{0x00, 0x01} // check type CRC32
	out.Write([]byte{0xFD, '7', 'z', 'X', 'Z', 0x00})
	out.Write(flags)
	le32(crc32.ChecksumIEEE(flags))

	// Block header: size, flags (one filter, no sizes), LZMA2 filter with
	// a 1-byte dictionary size property, padding, CRC32.
	hdr := []byte{0x02, 0x00, 0x21, 0x01, 0x16, 0x00, 0x00, 0x00}
	out.Write(hdr)
	le32(crc32.ChecksumIEEE(hdr))
	start := out.Len()
	for i := 0; i < len(data) || i == 0; i += 1 << 16 {
		chunk := data[i:min(i+1<<16, len(data))]
		if len(chunk) == 0 {
			break
		}
		ctl := byte(0x02) // stored, no dictionary reset
		if i == 0 {
			ctl = 0x01 // stored, dictionary reset
		}
		out.WriteByte(ctl)
		binary.Write(&out, binary.BigEndian, uint16(len(chunk)-1))
		out.Write(chunk)
	}
	out.WriteByte(0x00) // end of LZMA2 data
	compressed := out.Len() - start
	for out.Len()%4 != 0 {
		out.WriteByte(0)
	}
	le32(crc32.ChecksumIEEE(data))
	unpadded := len(hdr) + 4 + compressed + 4

	// Index: one record (unpadded size, uncompressed size), padding, CRC32.
	var idx bytes.Buffer
	idx.WriteByte(0x00)
	idx.Write(uvarint(1))
	idx.Write(uvarint(uint64(unpadded)))
	idx.Write(uvarint(uint64(len(data))))
	for idx.Len()%4 != 0 {
		idx.WriteByte(0)
	}
	ib := idx.Bytes()
	out.Write(ib)
	le32(crc32.ChecksumIEEE(ib))

	// Stream footer: CRC32, backward size, flags, magic.
	var foot bytes.Buffer
	binary.Write(&foot, binary.LittleEndian, uint32((len(ib)+4)/4-1))
	foot.Write(flags)
	le32(crc32.ChecksumIEEE(foot.Bytes()))
	out.Write(foot.Bytes())
	out.Write([]byte{'Y', 'Z'})
	return out.Bytes()
}

func uvarint(v uint64) []byte {
	var b [binary.MaxVarintLen64]byte
	return b[:binary.PutUvarint(b[:], v)]
}
