# Warren's images: one build stage compiles both binaries, two small runtime stages run them.
#   docker build --target gateway -t warren-gateway .
#   docker build --target worker  -t warren-worker  .

# --- build -----------------------------------------------------------------------------
FROM rust:1.88-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so this layer is reused until a
# Cargo.toml or Cargo.lock changes.
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY api-gateway/Cargo.toml api-gateway/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
RUN for crate in shared api-gateway worker; do \
        mkdir -p $crate/src && echo '' > $crate/src/lib.rs && echo 'fn main() {}' > $crate/src/main.rs; \
    done \
    && mkdir -p api-gateway/src/store/migrations && touch api-gateway/src/store/migrations/0001_jobs.sql \
    && cargo build --release --locked --bin api-gateway --bin worker \
    && rm -rf shared/src api-gateway/src worker/src

# Then the sources; touch them so cargo rebuilds the workspace crates.
COPY shared/src shared/src
COPY api-gateway/src api-gateway/src
COPY worker/src worker/src
RUN touch shared/src/lib.rs api-gateway/src/lib.rs api-gateway/src/main.rs worker/src/lib.rs worker/src/main.rs \
    && cargo build --release --locked --bin api-gateway --bin worker

# --- runtime base ----------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home warren
USER warren
ENV WARREN_LOG_FORMAT=json

# --- gateway ---------------------------------------------------------------------------
FROM runtime AS gateway
COPY --from=build /src/target/release/api-gateway /usr/local/bin/api-gateway
EXPOSE 8080
# bash's /dev/tcp: no curl needed in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/local/bin/api-gateway"]

# --- worker ----------------------------------------------------------------------------
FROM runtime AS worker
COPY --from=build /src/target/release/worker /usr/local/bin/worker
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/local/bin/worker"]
