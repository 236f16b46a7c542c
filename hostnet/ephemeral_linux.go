package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/interval"
)

// The sysctls, as read by ReadEphemeral.
const (
	localPortRangeFile    = "/proc/sys/net/ipv4/ip_local_port_range"
	localReservedPortFile = "/proc/sys/net/ipv4/ip_local_reserved_ports"
)

// ReadEphemeral reads the ephemeral ports of the calling thread's network
// namespace (the kernel answers /proc/sys/net for the reader's namespace).
func ReadEphemeral() (config.Ephemeral, error) {
	b, err := os.ReadFile(localPortRangeFile)
	if err != nil {
		return config.Ephemeral{}, fmt.Errorf("reading net.ipv4.ip_local_port_range: %w", err)
	}
	r, err := parseLocalPortRange(string(b))
	if err != nil {
		return config.Ephemeral{}, fmt.Errorf("net.ipv4.ip_local_port_range: %w", err)
	}
	e := config.Ephemeral{Range: r}
	switch b, err := os.ReadFile(localReservedPortFile); {
	case errors.Is(err, fs.ErrNotExist):
		// Kernels before 2.6.35 reserve nothing.
	case err != nil:
		return config.Ephemeral{}, fmt.Errorf("reading net.ipv4.ip_local_reserved_ports: %w", err)
	default:
		if e.Reserved, err = parseReservedPorts(string(b)); err != nil {
			return config.Ephemeral{}, fmt.Errorf("net.ipv4.ip_local_reserved_ports: %w", err)
		}
	}
	return e, nil
}

// parseLocalPortRange reads ip_local_port_range: two ports separated by
// white space ("32768\t60999\n").
func parseLocalPortRange(text string) (config.PortRange, error) {
	f := strings.Fields(text)
	if len(f) != 2 {
		return config.PortRange{}, fmt.Errorf("%q is not two ports", text)
	}
	var ports [2]uint16
	for i, s := range f {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return config.PortRange{}, fmt.Errorf("%q is not two ports", text)
		}
		ports[i] = uint16(n)
	}
	if ports[0] > ports[1] {
		return config.PortRange{}, fmt.Errorf("%q: first port %d is above last port %d", text, ports[0], ports[1])
	}
	return config.PortRange{First: ports[0], Last: ports[1]}, nil
}

// parseReservedPorts reads ip_local_reserved_ports: ports and ranges
// separated by commas ("8080,20000-20010"), or nothing.
func parseReservedPorts(text string) ([]config.PortRange, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, nil
	}
	var out []config.PortRange
	for _, item := range strings.Split(text, ",") {
		r, err := config.ParsePortRange(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return interval.MergePorts(out), nil
}
