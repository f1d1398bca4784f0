# Warren's images: one build stage compiles both binaries, two small runtime stages run them.
#   docker build --target gateway -t warren-gateway .
#   docker build --target worker  -t warren-worker  .
#
# The dependency layer follows cargo-chef's recipe technique without the tool: a `recipe`
# stage copies the whole context and keeps only the manifests, the lockfile and an empty stub
# for every target root it finds (scripts/docker-recipe.sh; CI runs the same script and checks
# that the recipe is a workspace cargo can load).
# The build stage copies that recipe and compiles the dependencies; Docker reuses that layer
# for as long as the recipe's bytes are the same, i.e. until a manifest or Cargo.lock changes.
# Nothing here names a workspace member or a source folder, so adding a crate needs no change.
# (cargo-chef itself would cost ~2 minutes of compiling per fresh cache on a 2-core builder,
# and BuildKit cache mounts are not available to Compose v1's classic builder.)

# --- recipe: manifests, lockfile and stub targets ----------------------------------------
FROM rust:1.88-bookworm AS recipe
WORKDIR /src
COPY . .
RUN scripts/docker-recipe.sh /src /recipe

# --- build -------------------------------------------------------------------------------
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY --from=recipe /recipe ./
# Stubs compile in a moment; what this layer keeps is the compiled dependencies.
RUN cargo build --release --locked --bin api-gateway --bin worker
COPY . .
# COPY keeps the context's modification times, which may be older than the stub build:
# touch every source so cargo rebuilds the workspace's own crates.
RUN find . -name target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin api-gateway --bin warren-admin --bin worker

# --- runtime base ------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# The CA bundle, so webhooks to https:// receivers can verify certificates.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN useradd --system --uid 10001 --no-create-home warren
USER warren
ENV WARREN_LOG_FORMAT=json

# --- gateway -----------------------------------------------------------------------------
FROM runtime AS gateway
COPY --from=build /src/target/release/api-gateway /usr/local/bin/api-gateway
COPY --from=build /src/target/release/warren-admin /usr/local/bin/warren-admin
EXPOSE 8080
# bash's /dev/tcp: no curl needed in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/local/bin/api-gateway"]

# --- worker ------------------------------------------------------------------------------
FROM runtime AS worker
COPY --from=build /src/target/release/worker /usr/local/bin/worker
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/local/bin/worker"]
