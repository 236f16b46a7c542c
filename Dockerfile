# vpnmasq container image.
#
# Build (the base images are build arguments, so a machine without a
# registry can substitute local ones):
#   docker build -t vpnmasq .
#   docker build --build-arg GO_IMAGE=local/go:1.26 --build-arg BASE_IMAGE=local/debian:12 \
#                --build-arg VERSION=$(git describe --always) -t vpnmasq .
#
# Run. vpnmasq routes the host's LAN, so it runs in the host's network
# namespace (--network host). Docker keeps /proc/sys read-only there and
# refuses --sysctl net.*, so enable forwarding on the host first
# (net.ipv4.ip_forward=1); vpnmasq then only checks it.
#   docker run --rm --network host \
#     --cap-add NET_ADMIN --cap-add NET_RAW --device /dev/net/tun \
#     -v ./vpnmasq.toml:/etc/vpnmasq/vpnmasq.toml:ro \
#     vpnmasq run --config /etc/vpnmasq/vpnmasq.toml
# Without the -v line, `run` uses the embedded default configuration
# (interfaces and addresses taken from the host); the annotated example is
# at /etc/vpnmasq/vpnmasq.example.toml. Check a file with
#   docker run --rm -v ./vpnmasq.toml:/c.toml:ro vpnmasq check --config /c.toml
#
# Capabilities, and why each is needed:
#   NET_ADMIN  create the TUN device (/dev/net/tun, TUNSETIFF); add its
#              address, routes and the policy routing rule over netlink;
#              create and remove vpnmasq's nftables table; enlarge socket
#              buffers past the sysctl limits (SO_RCVBUFFORCE).
#   NET_RAW    open the raw IPv4 socket (IP_HDRINCL) that sends translated
#              packets, and the AF_PACKET socket that captures replies on
#              the WAN interface.
# --device /dev/net/tun  gives the container the TUN clone device.

ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
WORKDIR /src
# Dependencies first, so that they stay cached while only the code changes.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Static (no cgo), so the binary needs nothing from the final image.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/vpnmasq ./cmd/vpnmasq

FROM ${BASE_IMAGE}
COPY --from=build /out/vpnmasq /usr/local/bin/vpnmasq
COPY config/example.toml /etc/vpnmasq/vpnmasq.example.toml
ENTRYPOINT ["/usr/local/bin/vpnmasq"]
# Healthy while the router answers on its admin socket.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
        CMD ["/usr/local/bin/vpnmasq", "status", "--health"]
# `run` reads /etc/vpnmasq/vpnmasq.toml when it exists, else the embedded default.
CMD ["run"]
