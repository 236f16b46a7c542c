package admin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxSocketPath is the longest path bind(2) takes for a unix socket on
// Linux: sun_path holds 108 bytes, the last one a NUL.
const maxSocketPath = 107

// DefaultSocket is where the router serves the admin API for local users.
const DefaultSocket = "/run/vpnmasq/admin.sock"

// ServeUnix serves h on a unix socket at path, readable and writable by its
// owner only (0600): whoever can connect skips the access checks (see
// Options.Trusted). It creates the socket's directory (0755) when missing and
// replaces a stale socket left by a router that died, but refuses to take
// over a socket that still answers or a path that is not a socket. closer
// stops serving and removes the socket. The server has SocketLimits.
func ServeUnix(path string, h http.Handler) (closer func() error, err error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// Chmod as well, so that a restrictive umask does not hide the
		// directory from users who may list it.
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("admin socket: %w", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, fmt.Errorf("admin socket: %w", err)
		}
	}
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}

	// Bind in a private directory, restrict the mode, then move the socket
	// into place: a socket bound at path directly would carry the umask's
	// mode between bind and chmod, which may let anyone connect.
	tmp, err := os.MkdirTemp(dir, ".")
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	bound := filepath.Join(tmp, "s")
	if len(bound) > maxSocketPath || len(path) > maxSocketPath {
		return nil, fmt.Errorf("admin socket %s: path too long: a unix socket's path, and %s bound first, must fit in %d bytes",
			path, bound, maxSocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// The listener would unlink the temporary name on Close; the socket's
	// real name is removed below instead.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Rename(bound, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	ours, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}

	srv := NewServer(h, SocketLimits)
	go srv.Serve(Listener(l, SocketLimits.MaxConns))

	var once sync.Once
	var closeErr error
	return func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
			}
			// Another router may have replaced the socket since; only
			// this one's is ours to remove.
			if fi, err := os.Lstat(path); err == nil && os.SameFile(fi, ours) {
				if err := os.Remove(path); err != nil {
					closeErr = fmt.Errorf("admin socket: %w", err)
				}
			}
		})
		return closeErr
	}, nil
}

// removeStale removes a socket file nobody listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("exists and is not a socket (%s)", fi.Mode().Type())
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return errors.New("in use: another router is serving on it")
	}
	return os.Remove(path)
}
