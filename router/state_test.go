package router

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/nat"
)

func stateRouter(t *testing.T, file string, log *bytes.Buffer) *Router {
	t.Helper()
	cfg := config.Default()
	cfg.WAN.Address = netip.MustParseAddr("198.18.0.1")
	cfg.LAN.Prefixes = []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}
	cfg.State.File = file
	return &Router{cfg: cfg, log: zerolog.New(log), closing: make(chan struct{}),
		nat: nat.New(nat.Config{WANAddr: cfg.WAN.Address})}
}

func TestStateFileAtomicWriteAndRestore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub") // created by the first write
	file := filepath.Join(dir, "state.bin")
	var log bytes.Buffer
	r := stateRouter(t, file, &log)

	r.restoreState()
	if !strings.Contains(log.String(), "no nat state to restore") {
		t.Fatalf("missing file: %s", log.String())
	}
	r.saveStateOnClose()
	r.saveStateOnClose() // over the first
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != "state.bin" {
		t.Fatalf("directory holds %v (%v), want state.bin alone: no temporary file left", entries, err)
	}

	log.Reset()
	stateRouter(t, file, &log).restoreState()
	if !strings.Contains(log.String(), "nat state restored") {
		t.Fatalf("restore: %s", log.String())
	}

	// A corrupt file is ignored, never fatal.
	if err := os.WriteFile(file, []byte("VMQSTATE\x00\x01 garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	stateRouter(t, file, &log).restoreState()
	if !strings.Contains(log.String(), "nat state ignored") || !strings.Contains(log.String(), "corrupt") {
		t.Fatalf("corrupt file: %s", log.String())
	}

	// An unwritable place is logged at stop, not fatal.
	log.Reset()
	r = stateRouter(t, "/proc/vpnmasq-state-test/state.bin", &log)
	r.state.on = true
	r.saveStateOnClose()
	if !strings.Contains(log.String(), "nat state not saved at stop") {
		t.Fatalf("unwritable: %s", log.String())
	}

	// The saver writes every interval until the router closes.
	file2 := filepath.Join(t.TempDir(), "periodic.bin")
	r = stateRouter(t, file2, &log)
	r.cfg.State.Interval = 20 * time.Millisecond
	r.restoreState()
	r.startStateSaver()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(file2); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic snapshot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(r.closing)
	r.wg.Wait()
}
