package admin

import (
	"net/http"
)

// Reloader is a Source that can re-read its configuration file. The
// handler offers it as POST /api/v1/reload on the trusted unix socket
// only: a reload changes what the router does, and the LAN listener's
// token guards reading, not control.
type Reloader interface {
	ReloadConfig() ReloadResult
}

// ReloadResult is the answer of POST /api/v1/reload. With Errors the file
// was refused and the running configuration stays; otherwise Applied names
// what changed live and NeedsRestart what changed in the file but runs on
// unchanged until the next start.
type ReloadResult struct {
	Source       string   `json:"source"`
	Applied      []string `json:"applied"`
	NeedsRestart []string `json:"needs_restart"`
	// Errors are the file's problems, each "file:line: key: message".
	Errors []string `json:"errors,omitempty"`
}

func (h *handler) reload(rl Reloader) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		res := rl.ReloadConfig()
		if res.Applied == nil {
			res.Applied = []string{}
		}
		if res.NeedsRestart == nil {
			res.NeedsRestart = []string{}
		}
		if len(res.Errors) > 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnprocessableEntity)
		}
		h.writeJSON(w, res)
	}
}
