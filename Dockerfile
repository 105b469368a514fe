# syntax=docker/dockerfile:1
# One image with both daemons, for the Helm charts in charts/:
#   /usr/local/bin/tekfed-hub    (charts/tekfed-hub)
#   /usr/local/bin/tekfed-agent  (charts/tekfed-member-agent)
# Build: docker build -t <registry>/tekfed:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tekfed-hub --bin tekfed-agent \
    && mkdir -p /out \
    && cp target/release/tekfed-hub target/release/tekfed-agent /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tekfed-hub /out/tekfed-agent /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tekfed-hub"]
