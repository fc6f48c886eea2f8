# syntax=docker/dockerfile:1
# One image with every service's binary, the services being those of
# services/registry.txt; compose (or a Deployment) picks the command, e.g.
# `inventory-service`, and sets PORT for it.
#
# Dependencies are cached with BuildKit cache mounts (Docker 23+ and
# `docker compose` build with BuildKit): crates.io downloads and the target
# directory persist between builds on the same builder, so a change to the
# services' code recompiles only the workspace's crates. The build is the
# one command below, exactly as it would run outside Docker; nothing in
# between (like cargo-chef's skeleton workspace) can build other features.
# The cache stays with the builder: a CI runner that starts empty compiles
# everything (there, cargo-chef's layers could be exported to a registry).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The workspace: every member of Cargo.toml's [workspace] must be there
# for cargo to load it (scripts/check-deploy.sh checks this list).
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY services services
COPY tests/e2e tests/e2e
COPY tools/loadgen tools/loadgen
# The cached target directory may hold builds of other sources whose files
# were newer than these (cargo compares modification times), so the
# workspace's files are touched first: its crates always rebuild from what
# was just copied, the dependencies come from the cache.
# -p, not --bin: --bin resolves features for the whole workspace, which
# would compile the e2e crate's fail points into the image's binaries.
# The packages are the registry's services (`<name>-service`, copied with
# services/); an empty list would stop the build, since cargo would then
# build every member, the e2e crate's fail points included.
RUN --mount=type=cache,id=ecommerce-saga-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=ecommerce-saga-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=ecommerce-saga-target,target=/src/target,sharing=locked \
    services=$(awk '{ sub(/#.*/, "") } NF { print $1 "-service" }' services/registry.txt) \
    && test -n "$services" \
    && find shared services tests/e2e tools/loadgen -type f -exec touch {} + \
    && cargo build --release --locked $(printf -- '-p %s ' $services) \
    && mkdir -p /out \
    && for service in $services; do cp "target/release/$service" /out/; done

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid (Kubernetes' runAsNonRoot can check a number).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /out/ /usr/local/bin/
ENV BIND_ADDRESS=0.0.0.0
USER 10001:10001
# No EXPOSE: each service listens on its PORT (services/registry.txt), which
# compose and the Deployments set and publish themselves; EXPOSE would only
# be a second list of the ports, read by nothing here.
# The shell form reads PORT at check time: each service is started with its
# own (3001 is order-service's default, the CMD below).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${PORT:-3001}/health" || exit 1
# The services stop on SIGTERM after draining (docker stop's signal).
CMD ["order-service"]
