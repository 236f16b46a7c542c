package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// composeProject names the Compose project of deploy/docker-compose.yml in
// the test's daemon, so its networks are vpnmasq_lan and vpnmasq_wan.
const composeProject = "vpnmasq"

// TestComposeFileRoutesTheLAN brings deploy/docker-compose.yml up in a
// Docker daemon of its own (as the container test does: a network namespace
// of its own, base images made locally) and routes its LAN host through the
// router: the service address answers, and a WAN host sees the router's
// WAN address.
func TestComposeFileRoutesTheLAN(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatalf("docker-compose not found (apt-get install -y --no-install-recommends docker-compose)")
	}
	d := ctrStartDaemon(t)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ctrImportGoImage(t, d, repo)
	ctrImportHostImage(t, d, repo)
	// The compose file builds from the Dockerfile with its default base
	// images, which need a registry; the image it names is built here from
	// the local ones, and `up --no-build` uses it.
	d.mustRun(t, 15*time.Minute, repo, ctrBuild...)

	file := filepath.Join(repo, "deploy", "docker-compose.yml")
	composeCmd := func(args ...string) []string {
		return append([]string{compose, "-f", file, "-p", composeProject}, args...)
	}
	t.Cleanup(func() {
		// The WAN host sits on the project's network, which down removes.
		if out, err := d.run(time.Minute, "", "docker", "rm", "--force", "wan-host"); err != nil && !strings.Contains(err.Error(), "No such") {
			t.Errorf("docker rm wan-host: %v (%s)", err, out)
		}
		if out, err := d.run(2*time.Minute, "", composeCmd("down", "--volumes", "--timeout", "10")...); err != nil {
			t.Errorf("docker-compose down: %v (%s)", err, out)
		}
	})
	d.mustRun(t, 3*time.Minute, "", composeCmd("up", "-d", "--no-build")...)
	ready := d.waitRouterLog(t, "router ready", 30*time.Second)
	t.Logf("router ready: %s", ready.Raw)

	t.Run("the LAN host reaches the router's service address", func(t *testing.T) {
		var out string
		ctrWaitFor(t, "healthz from the LAN host", 20*time.Second, func() (bool, string) {
			out, err = d.run(10*time.Second, "", composeCmd("exec", "-T", "lan-host", "wget", "-qO-", "http://192.0.2.53/healthz")...)
			return err == nil && strings.TrimSpace(out) == "ok", out + errString(err)
		})
	})
	t.Run("the LAN host's traffic leaves masqueraded as the router's WAN address", func(t *testing.T) {
		d.mustRun(t, time.Minute, "", "docker", "run", "-d", "--name", "wan-host", "--network", composeProject+"_wan",
			"--ip", ctrWANHostIP.String(), ctrHostImage,
			"sh", "-c", "echo hello from the WAN >/tmp/index.html && exec httpd -f -v -p 80 -h /tmp")
		out := d.mustRun(t, time.Minute, "", composeCmd("exec", "-T", "lan-host", "wget", "-qO-", "http://"+ctrWANHostIP.String()+"/")...)
		if strings.TrimSpace(out) != "hello from the WAN" {
			t.Errorf("wget through the router: %q", out)
		}
		var logs string
		ctrWaitFor(t, "the WAN host's log of the request", 10*time.Second, func() (bool, string) {
			logs = d.logs("wan-host")
			return strings.Contains(logs, ctrRouterWAN.String()), logs
		})
	})
}

// errString is err's text, or "" for nil.
func errString(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}
