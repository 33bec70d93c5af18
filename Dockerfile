# gantry: one image for masters and workers.
#
# FROM scratch: nothing is pulled, so it builds on a machine without any image
# registry. The build context must hold the static binary bin/gantry
# (`make build`, CGO_ENABLED=0) and a static busybox at build/busybox
# (scripts/busybox.sh); `make image` prepares both and runs docker build.
# Elsewhere (CI with a registry) the same three steps apply; see docs/DOCKER.md.
FROM scratch

# busybox first (rarely changes, so these layers stay cached): sh and the usual
# tools for exec tasks, installed as symlinks in /bin. A scratch image has no
# shell, hence the exec form.
COPY build/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "sh", "-c", "mkdir -p /tmp /data && chmod 1777 /tmp && chmod 0755 /data && ln -s /gantry /bin/gantry"]

# /bin/gantry (above) points here, so `gantry` is on PATH inside containers.
COPY bin/gantry /gantry

# No VOLUME here: it would give every container, workers included, an
# anonymous volume. Masters mount a named volume at /data (docker-compose.yml).
ENV PATH=/bin

# Ports (no EXPOSE: masters and workers differ, and compose publishes what it
# needs): masters 8080 (HTTP API), 7000 (Raft), 7946 (gossip, tcp+udp);
# workers 8090 (HTTP) and 7946 (gossip).

# The Go binary checks itself (busybox wget -T crashes). This default suits a
# master on 8080; workers override it with --addr http://127.0.0.1:8090.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/gantry", "health", "--addr", "http://127.0.0.1:8080"]

# Last, so a new version does not rebuild the busybox layers.
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gantry" \
      org.opencontainers.image.description="Raft-replicated task queue: masters and workers in one static binary, with a static busybox for exec tasks" \
      org.opencontainers.image.source="https://github.com/gantryhq/gantry" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

ENTRYPOINT ["/gantry"]
CMD ["--help"]
