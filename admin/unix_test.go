package admin

import (
	"context"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// unixGet fetches path from the server on the unix socket sock.
func unixGet(sock, path string) (int, string, error) {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://unix" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// staleSocket leaves a socket file at path that nobody listens on, as a
// router killed with SIGKILL does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
}

func trustedHandler() http.Handler {
	return NewHandler(&fakeSource{snap: fakeSnapshot()}, Options{Trusted: true, Log: zerolog.Nop()})
}

func TestServeUnix(t *testing.T) {
	cases := []struct {
		name    string
		file    string                          // the socket's path in a temporary directory
		prepare func(t *testing.T, path string) // before ServeUnix
		wantErr string                          // "" for success
		check   func(t *testing.T, path string)
	}{
		{"the socket is served and root-only (0600)", "admin.sock", nil, "", func(t *testing.T, path string) {
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want a socket with 0600", fi.Mode())
			}
			code, body, err := unixGet(path, "/healthz")
			if err != nil || code != 200 || body != "ok\n" {
				t.Errorf("GET /healthz: %d %q %v", code, body, err)
			}
		}},
		{"a stale socket is replaced", "admin.sock", staleSocket, "", func(t *testing.T, path string) {
			if code, _, err := unixGet(path, "/api/v1/status"); err != nil || code != 200 {
				t.Errorf("GET /api/v1/status: %d %v", code, err)
			}
		}},
		{"a missing directory is created 0755, whatever the umask", "run/admin.sock", func(t *testing.T, path string) {
			old := syscall.Umask(0o077)
			t.Cleanup(func() { syscall.Umask(old) })
		}, "", func(t *testing.T, path string) {
			fi, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o755 {
				t.Errorf("directory mode %v, want 0755", fi.Mode().Perm())
			}
		}},
		{"a path that is not a socket is left alone", "admin.sock", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a socket", func(t *testing.T, path string) {
			if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
				t.Errorf("the file was changed: %q %v", b, err)
			}
		}},
		{"a socket another router serves is not taken over", "admin.sock", func(t *testing.T, path string) {
			closer, err := ServeUnix(path, trustedHandler())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closer() })
		}, "in use", func(t *testing.T, path string) {
			if code, _, err := unixGet(path, "/healthz"); err != nil || code != 200 {
				t.Errorf("the first router stopped answering: %d %v", code, err)
			}
		}},
		{"a path too long for a socket is a clear error", strings.Repeat("x", 120), nil, "path too long", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tc.file)
			if tc.prepare != nil {
				tc.prepare(t, path)
			}
			closer, err := ServeUnix(path, trustedHandler())
			if tc.wantErr != "" {
				if err == nil {
					closer()
					t.Fatalf("no error, want %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q, want %q", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				defer closer()
			}
			if tc.check != nil {
				tc.check(t, path)
			}
			// Nothing but the socket (or the file that was there) is left.
			entries, _ := os.ReadDir(filepath.Dir(path))
			for _, e := range entries {
				if e.Name() != filepath.Base(path) {
					t.Errorf("left behind: %s", e.Name())
				}
			}
		})
	}

	t.Run("closing stops serving and removes the socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "admin.sock")
		closer, err := ServeUnix(path, trustedHandler())
		if err != nil {
			t.Fatal(err)
		}
		if err := closer(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("socket still there: %v", err)
		}
		if _, _, err := unixGet(path, "/healthz"); err == nil {
			t.Error("still serving")
		}
		if err := closer(); err != nil {
			t.Errorf("a second close failed: %v", err)
		}
	})
	t.Run("closing leaves a newer router's socket alone", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "admin.sock")
		closer, err := ServeUnix(path, trustedHandler())
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(path) // as if a newer router had cleaned up and taken the name
		closer2, err := ServeUnix(path, trustedHandler())
		if err != nil {
			t.Fatal(err)
		}
		defer closer2()
		closer()
		if code, _, err := unixGet(path, "/healthz"); err != nil || code != 200 {
			t.Errorf("the newer router's socket is gone: %d %v", code, err)
		}
	})
}
