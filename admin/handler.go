package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
)

// Options control who may use the handler.
type Options struct {
	// Allow lists the client networks that may connect. An empty list
	// refuses every untrusted client: the API shows the LAN's hosts and
	// their VPN peers, which is nobody's business by default.
	Allow []netip.Prefix
	// Token, when set, must come as "Authorization: Bearer <token>".
	Token string
	// Trusted skips both checks. It is for the unix socket, whose file
	// mode already limits it to root.
	Trusted bool
	Log     zerolog.Logger
}

// NewHandler serves the admin API and the status page:
//
//	GET /healthz          "ok"
//	GET /metrics          Prometheus text format (see NewCollector)
//	GET /api/v1/status    the Snapshot as JSON, with the first 100 mappings
//	GET /api/v1/mappings  ?offset=&limit= one page of the mappings:
//	                      {"total":N,"offset":O,"limit":L,"next_offset":O+L,"mappings":[...]}
//	                      (limit 100 by default, at most 1000; next_offset only
//	                      when more follow)
//	GET /api/v1/hosts     {"hosts":[...]}: the LAN hosts holding the most state
//	GET /api/v1/vpn       {"ike":[...],"esp":[...],"pptp":[...],"ah":[...]}
//	GET /                 the status page (HTML, refreshes itself)
//	POST /api/v1/reload   re-read the configuration file (Trusted only: the
//	                      unix socket, never the LAN; see Reloader)
//
// Other methods get 405 and other paths 404, but only after the access
// checks, so a refused client learns nothing about the routes.
func NewHandler(src Source, opts Options) http.Handler {
	h := &handler{src: src, opts: opts, log: opts.Log}
	if opts.Token != "" {
		// Comparing digests keeps the comparison constant-time even in the
		// token's length, which subtle.ConstantTimeCompare does not hide.
		sum := sha256.Sum256([]byte(opts.Token))
		h.token = sum[:]
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.Handle("GET /metrics", newMetricsHandler(src, h.log))
	mux.HandleFunc("GET /api/v1/status", h.status)
	mux.HandleFunc("GET /api/v1/mappings", h.mappings)
	mux.HandleFunc("GET /api/v1/hosts", h.hosts)
	mux.HandleFunc("GET /api/v1/vpn", h.vpn)
	mux.HandleFunc("GET /{$}", h.page)
	if opts.Trusted {
		// Go's profiler, on the root-only socket alone: `curl --unix-socket
		// /run/vpnmasq/admin.sock http://x/debug/pprof/profile?seconds=10`.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		if rl, ok := src.(Reloader); ok {
			mux.HandleFunc("POST /api/v1/reload", h.reload(rl))
		}
	}
	h.mux = mux
	return h
}

type handler struct {
	src   Source
	opts  Options
	token []byte // SHA-256 of Options.Token, nil without a token
	log   zerolog.Logger
	mux   *http.ServeMux
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.opts.Trusted {
		client, ok := clientAddr(r.RemoteAddr)
		if !ok || !allowed(h.opts.Allow, client) {
			h.log.Info().Str("client", r.RemoteAddr).Str("path", r.URL.Path).Msg("admin: client address not allowed")
			http.Error(w, "403 forbidden: this address may not use the admin interface", http.StatusForbidden)
			return
		}
		if h.token != nil && !h.tokenMatches(r) {
			h.log.Info().Str("client", r.RemoteAddr).Str("path", r.URL.Path).Msg("admin: missing or wrong bearer token")
			// Basic too, so that a browser asks for the token (as the
			// password) and can show the status page.
			w.Header().Add("WWW-Authenticate", `Bearer realm="vpnmasq"`)
			w.Header().Add("WWW-Authenticate", `Basic realm="vpnmasq", charset="UTF-8"`)
			http.Error(w, "401 unauthorized: a bearer token is required", http.StatusUnauthorized)
			return
		}
	}
	h.log.Debug().Str("client", r.RemoteAddr).Str("method", r.Method).Str("path", r.URL.Path).Msg("admin request")
	h.mux.ServeHTTP(w, r)
}

// clientAddr parses http.Request.RemoteAddr. IPv4-mapped IPv6 addresses are
// unmapped so that IPv4 prefixes match them.
func clientAddr(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

func allowed(allow []netip.Prefix, a netip.Addr) bool {
	for _, p := range allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// tokenMatches checks a request's credentials: "Authorization: Bearer
// <token>" for API clients and Prometheus, or HTTP Basic with the token as
// the password (any user name) for browsers. The scheme is case-insensitive
// (RFC 9110, section 11.1); the token is not.
func (h *handler) tokenMatches(r *http.Request) bool {
	if _, password, ok := r.BasicAuth(); ok {
		sum := sha256.Sum256([]byte(password))
		return subtle.ConstantTimeCompare(sum[:], h.token) == 1
	}
	header := r.Header.Get("Authorization")
	const scheme = "bearer "
	if len(header) < len(scheme) || !strings.EqualFold(header[:len(scheme)], scheme) {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(header[len(scheme):])))
	return subtle.ConstantTimeCompare(sum[:], h.token) == 1
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

// The mapping lists are paged: a router under load may hold a million
// mappings, and no response should copy or encode them all.
const (
	// defaultMappingLimit is the page size of /api/v1/mappings without
	// ?limit=, and statusMappings how many /api/v1/status includes.
	defaultMappingLimit = 100
	statusMappings      = 100
	// maxMappingLimit is the largest page /api/v1/mappings gives; a larger
	// ?limit= is cut to it (the response's limit says so).
	maxMappingLimit = 1000
)

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	s := h.src.Snapshot()
	s.Mappings, s.MappingsTotal = h.mappingPage(s, 0, statusMappings)
	h.writeJSON(w, s.normalized())
}

// mappingPage is one page of the mappings, from the Source's lister or,
// for a Source without one, from the snapshot.
func (h *handler) mappingPage(s Snapshot, offset, limit int) ([]Mapping, int) {
	if l, ok := h.src.(MappingLister); ok {
		page, total := l.MappingPage(offset, limit)
		return orEmpty(page), total
	}
	return pageOf(s.Mappings, offset, limit), len(s.Mappings)
}

func pageOf[T any](all []T, offset, limit int) []T {
	if offset >= len(all) {
		return []T{}
	}
	return all[offset:min(len(all), offset+limit)]
}

// MappingsResponse is the body of /api/v1/mappings: one page of the
// mappings. NextOffset is there only when more mappings follow.
type MappingsResponse struct {
	Total      int       `json:"total"`
	Offset     int       `json:"offset"`
	Limit      int       `json:"limit"`
	NextOffset *int      `json:"next_offset,omitempty"`
	Mappings   []Mapping `json:"mappings"`
}

func (h *handler) mappings(w http.ResponseWriter, r *http.Request) {
	offset, err := queryInt(r, "offset", 0)
	if err != nil {
		http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	limit, err := queryInt(r, "limit", defaultMappingLimit)
	if err != nil || limit == 0 {
		http.Error(w, "400 bad request: limit must be a whole number from 1 to "+strconv.Itoa(maxMappingLimit), http.StatusBadRequest)
		return
	}
	limit = min(limit, maxMappingLimit)
	var s Snapshot
	if _, ok := h.src.(MappingLister); !ok {
		s = h.src.Snapshot()
	}
	page, total := h.mappingPage(s, offset, limit)
	resp := MappingsResponse{Total: total, Offset: offset, Limit: limit, Mappings: page}
	if next := offset + len(page); next < total && len(page) > 0 {
		resp.NextOffset = &next
	}
	h.writeJSON(w, resp)
}

// queryInt reads a non-negative whole number from the query string.
func queryInt(r *http.Request, name string, def int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s must be a whole number, 0 or more", name)
	}
	return n, nil
}

// HostsResponse is the body of /api/v1/hosts.
type HostsResponse struct {
	Hosts []HostUsage `json:"hosts"`
}

func (h *handler) hosts(w http.ResponseWriter, r *http.Request) {
	h.writeJSON(w, HostsResponse{Hosts: orEmpty(h.src.Snapshot().Hosts)})
}

// vpn answers with a VPN itself: its JSON is the documented body.
func (h *handler) vpn(w http.ResponseWriter, r *http.Request) {
	h.writeJSON(w, h.src.Snapshot().VPN.normalized())
}

// writeJSON encodes before writing anything, so a failure can still be a
// clean 500 instead of a truncated 200.
func (h *handler) writeJSON(w http.ResponseWriter, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		h.log.Error().Err(err).Msg("admin: cannot encode JSON")
		http.Error(w, "500 internal error: cannot encode the response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}
