# syntax=docker/dockerfile:1
#
# Herald container image.
#
#   docker build -t herald:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -e HERALD_API_KEYS=... -e HERALD_JWT_HS256_SECRET=... \
#     -e HERALD_REDIS_URL=redis://redis:6379 herald:0.1.0
#
# The image holds no secrets. A node listening on 0.0.0.0 refuses to start without API
# keys and a JWT key (docs/CONFIG.md, "Secure by default"): pass them in the environment,
# on Kubernetes from a Secret (docs/DEPLOY.md). Base images are pinned to exact version
# tags; bump them deliberately (builder and runtime stay on the same Debian release, so
# the binary's glibc matches).

# ---- build ------------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# .dockerignore keeps target/, .git and test artifacts out of the context.
COPY . .
RUN --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=herald-cargo-target,target=/src/target \
    cargo build --release --locked --bin herald \
 && install -D -m 0755 target/release/herald /out/herald

# ---- runtime ----------------------------------------------------------------------
FROM debian:12.13-slim
# ca-certificates: for rediss:// (TLS to a managed Redis).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin herald

COPY --from=build /out/herald /usr/local/bin/herald
# Default configuration (no secrets); Kubernetes mounts its ConfigMap over /etc/herald.
COPY deploy/herald.toml /etc/herald/herald.toml
# The server serves ./static at "/", relative to its working directory.
WORKDIR /app
COPY static /app/static

LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Real-time WebSocket fan-out gateway with a Redis backplane"

# Numeric UID/GID so Kubernetes' runAsNonRoot can verify it. Files above stay root-owned
# and read-only for this user.
USER 10001:10001
EXPOSE 8080
# Herald handles SIGTERM itself (not ready at once, then drains over drain_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["--config", "/etc/herald/herald.toml"]
