# One image with the three service binaries; compose picks the command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# -p, not --bin: --bin resolves features for the whole workspace, which
# would compile the e2e crate's fail points into the image's binaries.
RUN cargo build --release --locked -p order-service -p inventory-service -p notification-service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/order-service /src/target/release/inventory-service /src/target/release/notification-service /usr/local/bin/
ENV BIND_ADDRESS=0.0.0.0
