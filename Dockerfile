# vpnmasq container image: a static binary on an empty base, run as root
# with nothing but NET_ADMIN and NET_RAW. integration/container_test.go
# builds it and runs the README's container commands against it.
#
# Build:
#   docker build -t vpnmasq .
# Without registry access, with locally made base images (the build stage
# needs a Go toolchain with the modules of go.mod in its module cache and a
# /bin/sh; GOPROXY=off keeps the build from trying the network):
#   docker build --network none --build-arg GO_IMAGE=local/go --build-arg GOPROXY=off -t vpnmasq .
#
# Run: README.md, "A LAN network behind a router container", has the
# docker network / create / connect / start sequence and every flag.
#
# Why root, and why these capabilities:
#   Docker hands the capabilities of --cap-add to root processes only (it
#   sets no ambient capabilities for another user), and file capabilities on
#   the binary would need a setcap in the image and a file system keeping
#   them. So vpnmasq runs as uid 0, but with every capability dropped except
#   NET_ADMIN  create the TUN device (TUNSETIFF on /dev/net/tun), bring it
#              up, add its route and the policy routing rule over netlink,
#              create and remove vpnmasq's nftables tables (the input
#              guard), enlarge socket buffers (SO_RCVBUFFORCE);
#   NET_RAW    the AF_PACKET sockets on the WAN interface: one captures
#              replies, one sends translated packets as Ethernet frames;
#              and the raw IPv4 socket (IP_HDRINCL) used while a next hop's
#              link address is not yet known.
#   Root without other capabilities cannot override file permissions or
#   leave the container's namespaces; --read-only and no-new-privileges
#   take away the rest. /run (a tmpfs) holds the admin socket;
#   /var/lib/vpnmasq (a volume) the NAT state that survives a restart.
#   Docker mounts /proc/sys read-only: the --sysctl flags set what vpnmasq
#   would otherwise write (forwarding, accept_local for the TUN, a reverse
#   path filter that is not strict); vpnmasq checks them at start.

ARG GO_IMAGE=golang:1.26-bookworm
# Empty: the binary is static and needs no file of a distribution (Docker
# provides /etc/resolv.conf, which the DNS forwarder reads).
ARG BASE_IMAGE=scratch

FROM ${GO_IMAGE} AS build
# Unset, Go's defaults apply (the public module proxy). An offline build
# passes GOPROXY=off and brings the modules in GO_IMAGE's module cache.
ARG GOPROXY
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
# An empty base sets no PATH; `docker exec <router> vpnmasq status` needs one.
ENV PATH=/usr/local/bin:/usr/bin:/bin
# The NAT state file ([state] file): a volume, so that a read-only
# container can write it and a new container can restore it. Mounted as a
# named volume (README.md), it keeps the LAN's connections across
# docker restart, docker stop and start, and an upgrade (a new container
# on the same volume).
VOLUME /var/lib/vpnmasq
# Root on purpose: see "Why root" above.
USER 0:0
# docker stop sends SIGTERM: vpnmasq writes its state, removes its TUN,
# routing rule, route and nftables tables, leaves the hold table that keeps
# the host from resetting the LAN's connections until the next start (or
# [state] hold runs out), and logs "router stopped" well within Docker's 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/vpnmasq"]
# `run` reads /etc/vpnmasq/vpnmasq.toml when it exists (mount it there),
# else the embedded default.
CMD ["run"]
# Healthy while the router answers on its admin socket. The first check runs
# one interval after the start, so the interval is short.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
        CMD ["/usr/local/bin/vpnmasq", "status", "--health"]
