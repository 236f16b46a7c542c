package hostnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReadNameservers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("# comment\nsearch lan\nnameserver 198.18.0.53\nnameserver 2001:db8::1\nnameserver  198.18.0.54 \noptions edns0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("IPv4 nameserver lines are read in order, IPv6 left out", func(t *testing.T) {
		got := readNameservers(path)
		want := []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("198.18.0.54")}
		if !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("a missing file has none", func(t *testing.T) {
		if got := readNameservers(filepath.Join(t.TempDir(), "none")); len(got) != 0 {
			t.Errorf("got %v", got)
		}
	})
}
