package config

import (
	"strings"
	"testing"
	"time"
)

func TestPortRangeDecodesTOMLValues(t *testing.T) {
	cases := []struct {
		name    string
		value   any
		want    PortRange
		wantErr string
	}{
		{"an integer is a single port", int64(8080), PortRange{8080, 8080}, ""},
		{"a string number is a single port", "8080", PortRange{8080, 8080}, ""},
		{"a string range is a range", "1000-1010", PortRange{1000, 1010}, ""},
		{"spaces around the dash are allowed", "1000 - 1010", PortRange{1000, 1010}, ""},
		{"the whole port space is allowed", "1-65535", PortRange{1, 65535}, ""},
		{"port 0 is rejected", int64(0), PortRange{}, "port 0"},
		{"port 0 in a range is rejected", "0-10", PortRange{}, "port 0"},
		{"a port above 65535 is rejected", int64(65536), PortRange{}, "above 65535"},
		{"a negative port is rejected", int64(-1), PortRange{}, "negative"},
		{"a range ending above 65535 is rejected", "60000-70000", PortRange{}, "above 65535"},
		{"a reversed range is rejected", "1010-1000", PortRange{}, "above last port"},
		{"text is rejected", "http", PortRange{}, "not a port or range"},
		{"an open range is rejected", "1000-", PortRange{}, "not a port or range"},
		{"a float is rejected", 80.5, PortRange{}, "not a float"},
		{"a boolean is rejected", true, PortRange{}, "not a boolean"},
		{"a date is rejected", time.Now(), PortRange{}, "not a date-time"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got PortRange
			err := got.UnmarshalTOML(tc.value)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestPortRangeHelpers(t *testing.T) {
	cases := []struct {
		name      string
		got, want any
	}{
		{"a single port prints as a number", PortRange{80, 80}.String(), "80"},
		{"a range prints with a dash", PortRange{20000, 32767}.String(), "20000-32767"},
		{"a range counts its ports inclusively", PortRange{1000, 1010}.Len(), 11},
		{"ranges sharing one port overlap", PortRange{1, 10}.Overlaps(PortRange{10, 20}), true},
		{"adjacent ranges do not overlap", PortRange{1, 10}.Overlaps(PortRange{11, 20}), false},
		{"an unset range overlaps nothing", PortRange{}.Overlaps(PortRange{0, 65535}), false},
		{"the zero range is unset", PortRange{}.IsZero(), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
	t.Run("text form round-trips", func(t *testing.T) {
		in := PortRange{1000, 1010}
		text, _ := in.MarshalText()
		var out PortRange
		if err := out.UnmarshalText(text); err != nil || out != in {
			t.Errorf("got %v, %v", out, err)
		}
	})
}
