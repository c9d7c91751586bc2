# syntax=docker/dockerfile:1
# carebill's images: one build stage, two runtime images (`--target carebill`, `--target tokenizer`).
#
# The runtime images are distroless (glibc and CA certificates, no shell, no package manager),
# run as the image's non-root user (uid 65532) and hold nothing but the one binary: no
# certificate, key, password or configuration is baked in (docker-compose.yml mounts them as
# secrets). Both binaries use rustls and a bundled SQLite, so they need no system library beyond
# glibc. The vault's image does not contain billing's binary and vice versa.

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependencies of Cargo.lock, the ones `cargo deny` checked.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p carebill -p tokenizer \
 && mkdir -p /out \
 && cp target/release/carebill target/release/tokenizer /out/

# Billing: the API, the patient portal and the staff console. Out of PCI scope (connected-to).
FROM gcr.io/distroless/cc-debian12:nonroot AS carebill
COPY --from=build /out/carebill /usr/local/bin/carebill
USER nonroot:nonroot
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/carebill"]
CMD ["serve"]

# The card vault: the cardholder data environment's only application.
FROM gcr.io/distroless/cc-debian12:nonroot AS tokenizer
COPY --from=build /out/tokenizer /usr/local/bin/tokenizer
USER nonroot:nonroot
EXPOSE 8444 8445
ENTRYPOINT ["/usr/local/bin/tokenizer"]
CMD ["serve"]
