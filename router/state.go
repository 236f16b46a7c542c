package router

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vpnmasq/vpnmasq/hostnet"
)

// routerState is the router's part of keeping the NAT state across
// restarts.
type routerState struct {
	on bool       // [state] enabled: restored at start, saved periodically and at close
	mu sync.Mutex // one writer of the file at a time
}

// processStart approximates when the process started: package
// initialisation runs before main.
var processStart = time.Now()

// SinceProcessStart is how long the process has been running: at "router
// ready", how long a restart kept the router from forwarding, beyond the
// old process's shutdown.
func SinceProcessStart() time.Duration { return time.Since(processStart) }

// restoreState loads the NAT state file ([state]) into the engine before
// any packet reaches it. A missing, corrupt, foreign, too old or
// newer-format file is logged and the router starts empty.
func (r *Router) restoreState() {
	st := r.cfg.State
	if !st.Enabled {
		return
	}
	r.state.on = true
	log := r.log.With().Str("file", st.File).Logger()
	f, err := os.Open(st.File)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info().Msg("no nat state to restore: starting empty")
		return
	}
	if err != nil {
		log.Warn().Err(err).Msg("nat state not restored: starting empty")
		return
	}
	defer f.Close()
	start := time.Now()
	res, err := r.nat.RestoreState(f, r.cfg.LAN.Prefixes, st.MaxAge)
	if err != nil {
		ev := log.Warn().Err(err)
		if res.Age != 0 {
			ev = ev.Str("age", res.Age.Round(time.Millisecond).String())
		}
		ev.Msg("nat state ignored: starting empty")
		return
	}
	ev := log.Info().Str("age", res.Age.Round(time.Millisecond).String()).
		Dur("took", time.Since(start))
	for k, v := range res.Kept {
		ev = ev.Int(k, v)
	}
	if n := res.DroppedTotal(); n > 0 {
		d := make(map[string]any, len(res.Dropped))
		for k, v := range res.Dropped {
			d[k] = v
		}
		ev = ev.Fields(map[string]any{"dropped": d})
	}
	ev.Msg("nat state restored")
}

// stateSaver writes the state file every [state] interval until the router
// closes.
func (r *Router) startStateSaver() {
	if !r.state.on {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.cfg.State.Interval)
		defer t.Stop()
		for {
			select {
			case <-r.closing:
				return
			case <-t.C:
				if err := r.saveState(); err != nil {
					r.log.Warn().Err(err).Str("file", r.cfg.State.File).Msg("nat state not saved")
				}
			}
		}
	}()
}

// holdForSuccessor installs the hold before the guards go, when the stop
// leaves state for a next start. A failure is logged: the teardown goes on.
func (r *Router) holdForSuccessor() {
	r.reload.mu.Lock()
	spec, d := r.spec, r.running().State.Hold
	r.reload.mu.Unlock()
	// running().State is the start's: [state] is only read at start.
	if !r.state.on || d <= 0 {
		return
	}
	table := "ip " + hostnet.HoldTableName(spec.TUN)
	if err := r.host.Hold(spec, d); err != nil {
		r.log.Warn().Err(err).Str("table", table).Msg("no hold for the next start: its restored connections may be reset")
		return
	}
	r.log.Info().Str("table", table).Stringer("hold", d).Msg("hold installed until the next start")
}

// saveStateOnClose writes the final state once the packet loops stopped. A
// failure is logged, not returned: the teardown went well, and the next
// start falls back on the last periodic snapshot.
func (r *Router) saveStateOnClose() {
	if !r.state.on {
		return
	}
	start := time.Now()
	if err := r.saveState(); err != nil {
		r.log.Error().Err(err).Str("file", r.cfg.State.File).Msg("nat state not saved at stop")
		return
	}
	r.log.Info().Str("file", r.cfg.State.File).Dur("took", time.Since(start)).Msg("nat state saved")
}

// saveState writes the engine's state atomically: a temporary file in the
// same directory, synced, renamed over the old one, and the directory
// synced, so that a crash at any point leaves the old file or the new one.
func (r *Router) saveState() error {
	r.state.mu.Lock()
	defer r.state.mu.Unlock()
	var buf bytes.Buffer
	if err := r.nat.SaveState(&buf, r.cfg.LAN.Prefixes); err != nil {
		return err
	}
	return writeFileAtomic(r.cfg.State.File, buf.Bytes())
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
