package cos

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Python's lzma (what the cos_agent library decodes dashboards with)
// reads the stored .xz streams back, for empty, small and multi-chunk
// inputs.
func TestStoreXZ_PythonLZMADecodes(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is needed to check the .xz streams, and CI is set")
		}
		t.Skip("skipped: no python3 to decode the .xz streams; CI is unset")
	}
	for _, n := range []int{0, 1, 1000, 1<<16 - 1, 1 << 16, 200_000} {
		data := bytes.Repeat([]byte("dashboard "), n/10+1)[:n]
		cmd := exec.Command(py, "-c", "import lzma,sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))")
		cmd.Stdin = bytes.NewReader(storeXZ(data))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%d bytes: python lzma: %v: %s", n, err, stderr.String())
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("%d bytes: decoded %d bytes that differ", n, len(out))
		}
	}
}
