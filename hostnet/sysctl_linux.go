package hostnet

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// procSys is where the kernel exposes sysctls. Files under net/ belong to
// the network namespace of the thread that opens them, and an open file
// keeps addressing that namespace, which is why a sysctlFile is opened once
// and kept for the restore.
const procSys = "/proc/sys"

// Sysctl keys vpnmasq changes.
const (
	sysctlIPForward = "net/ipv4/ip_forward"
)

// sysctlRPFilterKey is the reverse path filter setting of one interface.
func sysctlRPFilterKey(dev string) string {
	return "net/ipv4/conf/" + dev + "/rp_filter"
}

// sysctlFile is one open sysctl. Reads and writes go to offset 0, as procfs
// sysctls expect a whole value per call.
type sysctlFile struct {
	key string
	f   *os.File
	// fix tells a user with a read-only /proc/sys how to get the value
	// set; empty means "--sysctl <key>=<value>".
	fix string
}

func openSysctl(key string) (*sysctlFile, error) {
	f, err := os.OpenFile(filepath.Join(procSys, key), os.O_RDWR, 0)
	if err != nil {
		// Read-only /proc/sys (a container started without --sysctl) fails
		// the open for writing already: try read-only so the value can
		// still be checked, and let the write report how to fix it.
		ro, roErr := os.Open(filepath.Join(procSys, key))
		if roErr != nil {
			return nil, fmt.Errorf("sysctl %s: %w", dotted(key), err)
		}
		f = ro
	}
	return &sysctlFile{key: key, f: f}, nil
}

func (s *sysctlFile) read() (string, error) {
	buf := make([]byte, 64)
	n, err := s.f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading sysctl %s: %w", dotted(s.key), err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

func (s *sysctlFile) write(value string) error {
	_, err := s.f.WriteAt([]byte(value+"\n"), 0)
	if err == nil {
		return nil
	}
	if isReadOnly(err) {
		fix := s.fix
		if fix == "" {
			fix = "--sysctl " + dotted(s.key) + "=" + value
		}
		return fmt.Errorf("setting sysctl %s=%s: /proc/sys is read-only here (in a container, start it with %s): %w",
			dotted(s.key), value, fix, err)
	}
	return fmt.Errorf("setting sysctl %s=%s: %w", dotted(s.key), value, err)
}

func (s *sysctlFile) close() error { return s.f.Close() }

// isReadOnly reports whether err means the sysctl cannot be written here,
// rather than that the value was refused.
func isReadOnly(err error) bool {
	return errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) ||
		errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EBADF)
}

// dotted turns a /proc/sys path into the sysctl(8) spelling users type.
func dotted(key string) string { return strings.ReplaceAll(key, "/", ".") }

// sysctlChange is a sysctl set by Setup and what Close writes back.
type sysctlChange struct {
	file    *sysctlFile
	restore string // "" when the old value stays (nothing to write back)
}

// ensureSysctl sets key to want unless it already has that value; the
// returned change restores the old value, or only closes the file when
// nothing was changed.
func ensureSysctl(key, want string) (*sysctlChange, error) {
	f, err := openSysctl(key)
	if err != nil {
		return nil, err
	}
	old, err := f.read()
	if err != nil {
		f.close()
		return nil, err
	}
	if old == want {
		return &sysctlChange{file: f}, nil
	}
	if err := f.write(want); err != nil {
		f.close()
		return nil, err
	}
	return &sysctlChange{file: f, restore: old}, nil
}

// undo writes the old value back (if it was changed) and closes the file.
// A sysctl whose device is gone by now has nothing left to restore.
func (c *sysctlChange) undo() error {
	var err error
	if c.restore != "" {
		err = c.file.write(c.restore)
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENODEV) {
			err = nil
		}
	}
	return errors.Join(err, c.file.close())
}

// ensureLooseRPFilter makes sure reverse path filtering on dev is not
// strict. Replies written into the TUN come from WAN sources whose reverse
// path is the WAN interface, so strict mode (1) would drop them. The kernel
// applies max(all, dev): 0 and 2 both let them through, so the device value
// is only raised to 2 when the effective mode is strict; that way a
// container with a read-only /proc/sys works when its defaults are not strict.
func ensureLooseRPFilter(dev string) (*sysctlChange, error) {
	allFile, err := openSysctl("net/ipv4/conf/all/rp_filter")
	if err != nil {
		return nil, err
	}
	all, err := allFile.read()
	allFile.close()
	if err != nil {
		return nil, err
	}
	f, err := openSysctl(sysctlRPFilterKey(dev))
	if err != nil {
		return nil, err
	}
	f.fix = "--sysctl net.ipv4.conf.default.rp_filter=2 (devices created later inherit it)"
	cur, err := f.read()
	if err != nil {
		f.close()
		return nil, err
	}
	if all != "1" && cur != "1" {
		return &sysctlChange{file: f}, nil
	}
	if err := f.write("2"); err != nil {
		f.close()
		return nil, err
	}
	return &sysctlChange{file: f, restore: cur}, nil
}

// ensureAcceptLocal lets the kernel accept packets from dev whose source is
// one of the host's own addresses. The kernel ORs the "all" and the device
// value, so a container whose /proc/sys is read-only works when it was
// started with net.ipv4.conf.all.accept_local=1 (or default, which the new
// device inherits).
func ensureAcceptLocal(dev string) error {
	key := "net/ipv4/conf/" + dev + "/accept_local"
	c, err := ensureSysctl(key, "1")
	if err == nil {
		return c.file.close()
	}
	for _, k := range []string{"net/ipv4/conf/all/accept_local", key} {
		if f, ferr := openSysctl(k); ferr == nil {
			v, _ := f.read()
			f.close()
			if v == "1" {
				return nil
			}
		}
	}
	if isReadOnly(err) {
		return fmt.Errorf("%w (start the container with --sysctl net.ipv4.conf.all.accept_local=1)", err)
	}
	return err
}
