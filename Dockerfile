# syntax=docker/dockerfile:1
# Multi-stage build: a release binary on a distroless, non-root runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Builds go to /src/target (.dockerignore keeps the host's target/ out); a cache mount keeps them
# between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && install -D -m 0755 /src/target/release/sluice /out/sluice

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
# Pipelines are mounted from a ConfigMap at /etc/sluice.
WORKDIR /var/lib/sluice
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "/etc/sluice/pipeline.yaml", "--http", "0.0.0.0:8080"]
