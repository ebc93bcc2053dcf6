# syntax=docker/dockerfile:1
# Charon as a container image: charond is the entrypoint and PID 1 (it
# reaps whatever is re-parented to it and drains on SIGTERM), running the
# services of /etc/charon with its sockets in /run/charon/sockets.
# doc/deploy.md explains the choices; this file is linted by hadolint in
# CI, but no image is built there (base images cannot be pulled), so what
# it relies on is tested without it: tests/image.rs runs its entrypoint
# command line and its health check.
#
#   docker build -t charon .
#   docker run --rm --stop-timeout 30 -p 9464:9464 charon
#
# Build your own on top: add the service programs and their config files.
#
#   FROM charon
#   COPY --chown=root:root my-service /usr/local/bin/
#   COPY --chown=root:root conf/ /etc/charon/

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# --locked: the versions of Cargo.lock, nothing resolved anew at build time.
# The registry and target dir are build caches (BuildKit), kept between
# builds and never in the image; the binaries are copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin charond --bin charon --bin charon-echo \
    && install -D -m 0755 -t /out/bin \
        target/release/charond target/release/charon target/release/charon-echo

FROM debian:${DEBIAN_RELEASE}-slim
# A fixed uid/gid, so that Kubernetes' runAsNonRoot can check it and
# volumes can be given to it. The run dir is a directory below the volume:
# charond refuses a run dir it does not own or that others may write, and
# an emptyDir or a fresh volume is often root's and mode 0777; charond
# creates the subdirectory itself, owned by it and mode 0755.
RUN groupadd --system --gid 10001 charon \
    && useradd --system --uid 10001 --gid charon --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin charon \
    && install -d -o charon -g charon -m 0755 /run/charon /run/charon/sockets
COPY --from=build /out/bin/ /usr/local/bin/
# The demo echo service, so that the image serves something on its own;
# an image built on this one replaces it.
COPY demo/ /etc/charon/
# `charon health`, `charon stats` and clients find the run dir here.
ENV CHARON_RUN_DIR=/run/charon/sockets
VOLUME ["/etc/charon", "/run/charon"]
# Prometheus text at /metrics (charond --metrics-listen).
EXPOSE 9464
USER 10001:10001
# charond drains on SIGTERM: the sockets go, queued requests are served,
# instances exit; give it more than `stop-grace` (10 s by default) before
# the runtime's SIGKILL: docker run --stop-timeout 30.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["charon", "health", "-t", "4"]
ENTRYPOINT ["charond", "--config-dir", "/etc/charon", "--run-dir", "/run/charon/sockets"]
CMD ["--metrics-listen", "0.0.0.0:9464"]
