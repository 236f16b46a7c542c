# vpnmasq tasks. `just --list` shows them; most need root (namespaces, TUN).

default_config := "/etc/vpnmasq/vpnmasq.toml"
version := `git describe --tags --always --dirty 2>/dev/null || echo dev`
# Pinned so that a new release's checks cannot break `just lint` overnight.
staticcheck := "honnef.co/go/tools/cmd/staticcheck@v0.8.2"
deadcode := "golang.org/x/tools/cmd/deadcode@v0.53.0"

# Static binary in bin/vpnmasq (no cgo: runs on any Linux of the same architecture).
build:
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version={{version}}" -o bin/vpnmasq ./cmd/vpnmasq

# The whole suite exactly as CI runs it (root; installs packages first).
test:
    bash .ci/run

# Unit tests with the race detector: every package but the ones that build
# namespace labs (integration/, cmd/, internal/lab/).
unit:
    go test -race -count=1 $(go list ./... | grep -v -e '/integration' -e '/cmd/' -e '/internal/lab')

# Every fuzz target for a while each (one package and target per `go test -fuzz`).
fuzz time="20s":
    #!/usr/bin/env bash
    set -euo pipefail
    for pkg in $(go list ./... | grep -v -e '/integration' -e '/cmd/' -e '/internal/lab'); do
        for name in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
            echo "--- $pkg $name ({{time}})"
            go test -run='^$' -fuzz="^${name}\$" -fuzztime={{time}} "$pkg"
        done
    done

# Kernel masquerade vs. vpnmasq, alternating on one namespace lab (as root): TCP and UDP both
# ways, raw ESP and GRE packets/s, ping RTT p50/p99 idle and under load, router CPU per million
# packets. BENCH_RUNS, BENCH_SECONDS, BENCH_OUT=file.md; see docs/performance.md.
bench:
    go test -tags bench -run TestBench -v -timeout 30m ./integration/

# gofmt, go vet, staticcheck and deadcode (nothing that no command or test reaches).
lint:
    #!/usr/bin/env bash
    set -euo pipefail
    unformatted=$(gofmt -l .)
    if [[ -n $unformatted ]]; then
        echo "not gofmt-formatted:"
        echo "$unformatted"
        exit 1
    fi
    go vet ./...
    go run {{staticcheck}} ./...
    dead=$(go run {{deadcode}} -test ./...)
    if [[ -n $dead ]]; then
        echo "unreachable code:"
        echo "$dead"
        exit 1
    fi

# Run the router (root).
run config=default_config:
    go run ./cmd/vpnmasq run --config {{config}}

# Build a throwaway namespace lab and show the router working in it (root).
demo:
    go run ./cmd/vpnmasq demo
