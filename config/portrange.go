package config

import (
	"fmt"
	"strconv"
	"strings"
)

// ParsePortRange parses "8080" or "20000-32767". Port 0 and ports above
// 65535 are rejected, as is a range whose first port is above its last.
func ParsePortRange(s string) (PortRange, error) {
	firstText, lastText, isRange := strings.Cut(s, "-")
	first, err := parsePort(firstText, s)
	if err != nil {
		return PortRange{}, err
	}
	last := first
	if isRange {
		if last, err = parsePort(lastText, s); err != nil {
			return PortRange{}, err
		}
	}
	r := PortRange{First: first, Last: last}
	if first > last {
		return PortRange{}, fmt.Errorf("%q: first port %d is above last port %d", s, first, last)
	}
	return r, nil
}

func parsePort(text, whole string) (uint16, error) {
	text = strings.TrimSpace(text)
	n, err := strconv.ParseUint(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port or range (write 8080 or \"20000-32767\")", whole)
	}
	return checkPort(n)
}

func checkPort(n uint64) (uint16, error) {
	switch {
	case n == 0:
		return 0, fmt.Errorf("port 0 cannot be used")
	case n > 65535:
		return 0, fmt.Errorf("port %d is above 65535", n)
	}
	return uint16(n), nil
}

// UnmarshalTOML accepts a TOML integer (8080) or string ("8080",
// "1000-1010"); BurntSushi/toml hands integers over as int64.
func (r *PortRange) UnmarshalTOML(value any) error {
	switch v := value.(type) {
	case int64:
		if v < 0 {
			return fmt.Errorf("port %d is negative", v)
		}
		p, err := checkPort(uint64(v))
		if err != nil {
			return err
		}
		*r = PortRange{First: p, Last: p}
		return nil
	case string:
		parsed, err := ParsePortRange(v)
		if err != nil {
			return err
		}
		*r = parsed
		return nil
	default:
		return fmt.Errorf("must be a port (8080) or a range (\"20000-32767\"), not %s", tomlTypeName(value))
	}
}

// UnmarshalText parses the same text as ParsePortRange.
func (r *PortRange) UnmarshalText(text []byte) error {
	parsed, err := ParsePortRange(string(text))
	if err != nil {
		return err
	}
	*r = parsed
	return nil
}

// MarshalText writes the form ParsePortRange reads.
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// String is "8080" for a single port and "20000-32767" for a range.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// IsZero reports whether the range is unset (port 0 is never a valid port).
func (r PortRange) IsZero() bool { return r == PortRange{} }

// Overlaps reports whether the two ranges share at least one port.
func (r PortRange) Overlaps(o PortRange) bool {
	return !r.IsZero() && !o.IsZero() && r.First <= o.Last && o.First <= r.Last
}
