package admin

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// reloadSource is a Source that counts reloads and answers with res.
type reloadSource struct {
	fakeSource
	calls int
	res   ReloadResult
}

func (r *reloadSource) ReloadConfig() ReloadResult { r.calls++; return r.res }

func TestReloadOnlyOnTheTrustedSocket(t *testing.T) {
	post := func(src Source, opts Options) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/api/v1/reload", nil)
		req.RemoteAddr = "192.168.77.5:4000"
		rec := httptest.NewRecorder()
		NewHandler(src, opts).ServeHTTP(rec, req)
		return rec
	}
	t.Run("the socket reloads and answers what was applied", func(t *testing.T) {
		src := &reloadSource{res: ReloadResult{Source: "/etc/vpnmasq/vpnmasq.toml", Applied: []string{"routing.no_nat"}}}
		rec := post(src, Options{Trusted: true})
		var got ReloadResult
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 200 || src.calls != 1 {
			t.Fatalf("status %d, %d reloads, body %s (%v)", rec.Code, src.calls, rec.Body, err)
		}
		if len(got.Applied) != 1 || got.NeedsRestart == nil {
			t.Errorf("answer %+v", got)
		}
	})
	t.Run("a refused file is 422 with its problems", func(t *testing.T) {
		src := &reloadSource{res: ReloadResult{Errors: []string{"f.toml:3: nat.udp_timeout: bad"}}}
		if rec := post(src, Options{Trusted: true}); rec.Code != 422 {
			t.Errorf("status %d, want 422", rec.Code)
		}
	})
	t.Run("the LAN listener has no reload, even for an allowed client with the token", func(t *testing.T) {
		src := &reloadSource{}
		req := httptest.NewRequest("POST", "/api/v1/reload", nil)
		req.RemoteAddr = "192.168.77.5:4000"
		req.Header.Set("Authorization", "Bearer secret")
		rec := httptest.NewRecorder()
		NewHandler(src, Options{Allow: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}, Token: "secret"}).ServeHTTP(rec, req)
		if rec.Code != 404 && rec.Code != 405 || src.calls != 0 {
			t.Errorf("status %d, %d reloads; want 404 or 405 and none", rec.Code, src.calls)
		}
	})
}
