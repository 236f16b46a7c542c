package admin

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"math"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestRoutes(t *testing.T) {
	cases := []struct {
		name     string
		method   string
		path     string
		wantCode int
		wantType string // Content-Type prefix
		check    func(t *testing.T, body string)
	}{
		{"healthz answers ok", "GET", "/healthz", 200, "text/plain", func(t *testing.T, body string) {
			if body != "ok\n" {
				t.Errorf("body %q, want %q", body, "ok\n")
			}
		}},
		{"HEAD works wherever GET does", "HEAD", "/healthz", 200, "text/plain", nil},
		{"metrics are in the Prometheus text format", "GET", "/metrics", 200, "text/plain; version=0.0.4", func(t *testing.T, body string) {
			if !strings.Contains(body, "vpnmasq_build_info{version=\"1.2.3\"} 1") {
				t.Errorf("no build info in:\n%s", body)
			}
		}},
		{"status is the whole snapshot", "GET", "/api/v1/status", 200, "application/json", func(t *testing.T, body string) {
			var got Snapshot
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			want := fakeSnapshot().normalized()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip differs:\n got %+v\nwant %+v", got, want)
			}
		}},
		{"mappings are the mapping list", "GET", "/api/v1/mappings", 200, "application/json", func(t *testing.T, body string) {
			var got MappingsResponse
			decodeStrict(t, body, &got)
			if !reflect.DeepEqual(got.Mappings, fakeSnapshot().Mappings) {
				t.Errorf("got %+v\nwant %+v", got.Mappings, fakeSnapshot().Mappings)
			}
		}},
		{"vpn has ike, esp, pptp and ah", "GET", "/api/v1/vpn", 200, "application/json", func(t *testing.T, body string) {
			var keys map[string]json.RawMessage
			if err := json.Unmarshal([]byte(body), &keys); err != nil {
				t.Fatal(err)
			}
			if got := slices.Sorted(maps.Keys(keys)); !slices.Equal(got, []string{"ah", "esp", "ike", "pptp"}) {
				t.Errorf("keys %v", got)
			}
			var got VPN
			decodeStrict(t, body, &got)
			if !reflect.DeepEqual(got, fakeSnapshot().VPN.normalized()) {
				t.Errorf("got %+v\nwant %+v", got, fakeSnapshot().VPN)
			}
		}},
		{"hosts are the top LAN hosts", "GET", "/api/v1/hosts", 200, "application/json", func(t *testing.T, body string) {
			var got HostsResponse
			decodeStrict(t, body, &got)
			if !reflect.DeepEqual(got.Hosts, fakeSnapshot().Hosts) {
				t.Errorf("got %+v\nwant %+v", got.Hosts, fakeSnapshot().Hosts)
			}
		}},
		{"the root is the status page", "GET", "/", 200, "text/html", func(t *testing.T, body string) {
			if !strings.HasPrefix(body, "<!DOCTYPE html>") {
				t.Errorf("not an HTML document: %.100s", body)
			}
		}},
		{"POST to a route is 405", "POST", "/healthz", 405, "text/plain", nil},
		{"DELETE on the API is 405", "DELETE", "/api/v1/status", 405, "text/plain", nil},
		{"PUT on the page is 405", "PUT", "/", 405, "text/plain", nil},
		{"an unknown path is 404", "GET", "/nope", 404, "text/plain", nil},
		{"an unknown API path is 404", "GET", "/api/v1/", 404, "text/plain", nil},
		{"a path below a route is 404", "GET", "/healthz/more", 404, "text/plain", nil},
		{"an unknown path is 404 for any method", "POST", "/nope", 404, "text/plain", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := serve(t, &fakeSource{snap: fakeSnapshot()}, tc.method, tc.path)
			if rec.Code != tc.wantCode {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantCode, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, tc.wantType) {
				t.Errorf("Content-Type %q, want %q", ct, tc.wantType)
			}
			if tc.wantCode == 405 && rec.Header().Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
			if tc.check != nil {
				tc.check(t, rec.Body.String())
			}
		})
	}
}

func TestJSON(t *testing.T) {
	t.Run("JSON is indented", func(t *testing.T) {
		body := serve(t, &fakeSource{snap: fakeSnapshot()}, "GET", "/api/v1/status").Body.String()
		if !strings.Contains(body, "\n  \"wan_addr\": \"198.18.0.2\",\n") {
			t.Errorf("not indented with snake_case names:\n%.300s", body)
		}
	})
	t.Run("field names are snake_case", func(t *testing.T) {
		body := serve(t, &fakeSource{snap: fakeSnapshot()}, "GET", "/api/v1/status").Body.String()
		for _, name := range []string{"time", "uptime", "version", "wan_addr", "wan_if", "lan_prefixes",
			"service_addr", "traffic", "drops", "mappings", "ports", "vpn", "dns", "in_use", "initiator_spi",
			"responder_spi", "wan_port", "lan_host", "out_spi", "in_spi", "masq_call_id", "peer_call_id",
			"gre_out", "gre_in", "last_seen", "udp_queries", "tcp_queries", "cache_hits", "upstream_failures",
			"answered", "static", "flows", "idle", "age", "remote", "direction", "packets", "bytes"} {
			if !strings.Contains(body, `"`+name+`":`) {
				t.Errorf("no %q in the status JSON", name)
			}
		}
	})
	for _, path := range []string{"/api/v1/status", "/api/v1/mappings", "/api/v1/vpn"} {
		t.Run("an idle router's "+path+" has empty lists, not null", func(t *testing.T) {
			body := serve(t, &fakeSource{}, "GET", path).Body.String()
			if strings.Contains(body, "null") {
				t.Errorf("null in:\n%s", body)
			}
			if !strings.Contains(body, "[]") {
				t.Errorf("no empty list in:\n%s", body)
			}
		})
	}
	t.Run("every drop reason is listed, zeros included", func(t *testing.T) {
		var got Snapshot
		decodeStrict(t, serve(t, &fakeSource{}, "GET", "/api/v1/status").Body.String(), &got)
		if n, ok := got.Drops["ah_not_masqueradable"]; !ok || n != 0 {
			t.Errorf("ah_not_masqueradable = %d, %v; want 0, true", n, ok)
		}
	})
	t.Run("the source's drop map is not changed", func(t *testing.T) {
		src := &fakeSource{snap: fakeSnapshot()}
		serve(t, src, "GET", "/api/v1/status")
		if len(src.snap.Drops) != 3 {
			t.Errorf("the source's map now has %d entries", len(src.snap.Drops))
		}
	})
	t.Run("one snapshot per request", func(t *testing.T) {
		for _, path := range []string{"/api/v1/status", "/api/v1/mappings", "/api/v1/vpn", "/", "/metrics"} {
			src := &fakeSource{snap: fakeSnapshot()}
			serve(t, src, "GET", path)
			if n := src.calls.Load(); n != 1 {
				t.Errorf("%s took %d snapshots", path, n)
			}
		}
	})
}

func TestSecondsJSON(t *testing.T) {
	cases := []struct {
		name string
		in   Seconds
		want string
	}{
		{"whole seconds are integers", 12, "12"},
		{"milliseconds are kept", 1.234, "1.234"},
		{"finer digits are rounded", 1.23456, "1.235"},
		{"zero", 0, "0"},
		{"NaN becomes 0 rather than an encoding error", Seconds(math.NaN()), "0"},
		{"infinity becomes 0", Seconds(math.Inf(1)), "0"},
		{"large values are not in exponent form", 1e9, "1000000000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("got %s, want %s", b, tc.want)
			}
		})
	}
	t.Run("conversions", func(t *testing.T) {
		if s := SecondsOf(1500 * time.Millisecond); s != 1.5 {
			t.Errorf("SecondsOf(1.5s) = %v", float64(s))
		}
		if d := Seconds(2.5).Duration(); d != 2500*time.Millisecond {
			t.Errorf("Duration = %v", d)
		}
		if s := Seconds(3723.4).String(); s != "1h2m3s" {
			t.Errorf("String = %q", s)
		}
	})
}

func TestAccessControl(t *testing.T) {
	lan := []netip.Prefix{lanPrefix}
	cases := []struct {
		name     string
		opts     Options
		remote   string
		auth     string
		path     string
		wantCode int
	}{
		{"a client in an allowed prefix is served", Options{Allow: lan}, "192.168.77.5:4000", "", "/healthz", 200},
		{"a client outside the allowed prefixes is refused", Options{Allow: lan}, "192.168.78.5:4000", "", "/healthz", 403},
		{"the WAN side is refused", Options{Allow: lan}, "198.18.0.1:4000", "", "/api/v1/status", 403},
		{"an IPv4-mapped IPv6 client matches an IPv4 prefix", Options{Allow: lan}, "[::ffff:192.168.77.5]:4000", "", "/healthz", 200},
		{"no allowed prefix refuses everybody", Options{}, "192.168.77.5:4000", "", "/healthz", 403},
		{"an unparsable client address is refused", Options{Allow: lan}, "@", "", "/healthz", 403},
		{"a refused client cannot probe for paths", Options{Allow: lan}, "192.168.78.5:4000", "", "/nope", 403},
		{"a missing token is 401", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "", "/healthz", 401},
		{"a wrong token is 401", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Bearer s3cre7", "/healthz", 401},
		{"a token prefix is 401", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Bearer s3cr", "/healthz", 401},
		{"another scheme is 401", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Basic s3cret", "/healthz", 401},
		{"the scheme alone is 401", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Bearer", "/healthz", 401},
		{"the right token is served", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Bearer s3cret", "/api/v1/vpn", 200},
		{"a browser's Basic credentials with the token as password are served", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:s3cret")), "/", 200},
		{"Basic credentials with another password are 401", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:s3cre7")), "/", 401},
		{"the scheme is case-insensitive", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "bearer s3cret", "/healthz", 200},
		{"the token does not open a refused prefix", Options{Allow: lan, Token: "s3cret"}, "198.18.0.1:4000", "Bearer s3cret", "/healthz", 403},
		{"an unauthenticated client cannot probe for paths", Options{Allow: lan, Token: "s3cret"}, "192.168.77.5:4000", "", "/nope", 401},
		{"trusted skips the prefix check", Options{Trusted: true}, "@", "", "/api/v1/status", 200},
		{"trusted skips the token check", Options{Trusted: true, Token: "s3cret"}, "", "", "/metrics", 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Log = zerolog.Nop()
			h := NewHandler(&fakeSource{snap: fakeSnapshot()}, tc.opts)
			req := httptest.NewRequest("GET", tc.path, nil)
			req.RemoteAddr = tc.remote
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantCode {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantCode, rec.Body)
			}
			switch tc.wantCode {
			case 401:
				if got := rec.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer ") {
					t.Errorf("WWW-Authenticate %q, want a Bearer challenge", got)
				}
				fallthrough
			case 403:
				if body := rec.Body.String(); len(body) == 0 || len(body) > 100 || strings.Contains(body, "vpnmasq_") {
					t.Errorf("refusal should be a short text, got %q", body)
				}
			}
		})
	}

	t.Run("a real connection is checked by its source address", func(t *testing.T) {
		cases := []struct {
			allow    string
			wantCode int
		}{{"127.0.0.0/8", 200}, {"192.168.77.0/24", 403}}
		for _, c := range cases {
			srv := httptest.NewServer(NewHandler(&fakeSource{}, Options{
				Allow: []netip.Prefix{netip.MustParsePrefix(c.allow)}, Log: zerolog.Nop()}))
			resp, err := srv.Client().Get(srv.URL + "/healthz")
			if err != nil {
				srv.Close()
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			srv.Close()
			if resp.StatusCode != c.wantCode {
				t.Errorf("allow %s: status %d, want %d", c.allow, resp.StatusCode, c.wantCode)
			}
		}
	})
}

// decodeStrict decodes JSON that must have no field v does not know.
func decodeStrict(t *testing.T, body string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode: %v\n%s", err, body)
	}
}

func TestProfilerOnlyOnTheTrustedSocket(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want int
	}{
		{"the trusted socket serves the profiler index", Options{Trusted: true}, 200},
		{"the LAN listener does not", Options{Allow: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}}, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/debug/pprof/", nil)
			req.RemoteAddr = "192.168.77.5:4000"
			rec := httptest.NewRecorder()
			NewHandler(&fakeSource{}, tc.opts).ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("status %d, want %d", rec.Code, tc.want)
			}
		})
	}
}
