package hostnet

import (
	"net/netip"
	"os"
	"strings"
)

// readNameservers returns the IPv4 "nameserver" lines of a resolv.conf; a
// missing or unreadable file has none.
func readNameservers(path string) []netip.Addr {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() {
				out = append(out, a)
			}
		}
	}
	return out
}
