package router

import (
	"net/http"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/admin"
)

// lanAdmin is the admin server's handler on the service address, with the
// allow list and token a reload may replace: the next connection and the
// next request see the new ones, open connections keep being checked per
// request.
type lanAdmin struct {
	log   zerolog.Logger
	h     atomic.Pointer[http.Handler]
	allow atomic.Pointer[[]netip.Prefix]
}

// set builds the handler for an allow list and token.
func (l *lanAdmin) set(src admin.Source, allow []netip.Prefix, token string) {
	allow = slices.Clone(allow)
	h := admin.NewHandler(src, admin.Options{Allow: allow, Token: token, Log: l.log})
	l.allow.Store(&allow)
	l.h.Store(&h)
}

func (l *lanAdmin) allowed() []netip.Prefix { return *l.allow.Load() }

func (l *lanAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*l.h.Load()).ServeHTTP(w, r) }
