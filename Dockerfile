# runbridge container image.
#   docker build -t runbridge .
#   docker run -d -p 8080:8080 -v runbridge-data:/var/lib/runbridge \
#     -e RUNBRIDGE_ADMIN_TOKEN=... -e RUNBRIDGE_HOOK_TOKEN=... runbridge

# --- build -------------------------------------------------------------------
# The toolchain the lockfile is built and tested with (rust-version in
# Cargo.toml is the oldest that may work; locked dependencies may need newer).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml
# or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/loop.rs \
 && cargo build --release --locked --bin runbridge \
 && rm -rf src benches
# Then the release build of our own code.
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin runbridge

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates: the HTTP client needs them even for plain-HTTP vendors.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 runbridge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/runbridge \
      --shell /usr/sbin/nologin runbridge \
 && mkdir -p /var/lib/runbridge /etc/runbridge \
 && chown runbridge:runbridge /var/lib/runbridge \
 && chmod 0700 /var/lib/runbridge
COPY --from=build /src/target/release/runbridge /usr/local/bin/runbridge
COPY config/deploy/docker.toml /etc/runbridge/runbridge.toml
ENV RUNBRIDGE_CONFIG=/etc/runbridge/runbridge.toml
USER 10001:10001
WORKDIR /var/lib/runbridge
VOLUME ["/var/lib/runbridge"]
EXPOSE 8080
# The binary checks itself: exit 0 when /readyz answers ready (no curl needed).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/runbridge", "health", "--url", "http://127.0.0.1:8080/readyz"]
# SIGTERM drains within server.shutdown_timeout; give `docker stop -t` more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/runbridge"]
CMD ["serve"]
