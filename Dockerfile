# The dkv node image: Debian's slim base with the kvd and kvcat built on the host.
#
#   tools/docker-dist              cargo build --release, binaries copied into dist/
#   docker compose up --build      three nodes (compose.yaml)
#
# The binaries come from the host instead of a Rust build stage so that the image builds
# without pulling a Rust image (our machines reach no registry; tools/docker-base makes the
# base image from Debian's packages) and in seconds. Build them on a glibc no newer than
# bookworm's (2.36), or change BASE.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY dist/kvd dist/kvcat /usr/local/bin/
RUN mkdir -p /data
VOLUME /data
EXPOSE 7401
ENV RUST_LOG=info
ENTRYPOINT ["kvd"]
