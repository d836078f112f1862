# loops in a container: the daemon runs the workspace mounted at /workspace.
#
#   docker build -t loops .
#   docker run -d --name loops --init --restart unless-stopped --stop-timeout 75 \
#     -v "$PWD:/workspace" --env-file ~/.config/loops/loops.env loops
#
# See docs/deploy.md (file ownership of the volume, logs, other commands).

# ---- build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own, so a change to loops does not download and
# compile them all again: the real manifest and lock file with an empty crate. The bench
# and test targets are cut from this copy of the manifest because their files are not
# here yet (cargo refuses a manifest naming missing targets); the dependencies are the same.
COPY Cargo.toml Cargo.lock ./
RUN sed -i -e '/^\[\[bench\]\]/,/^$/d' -e '/^\[\[test\]\]/,/^$/d' Cargo.toml \
 && mkdir src && touch src/lib.rs && echo 'fn main() {}' > src/main.rs \
 && cargo build --release --locked --bin loops \
 && rm -rf src Cargo.toml
COPY . .
# The copied sources may be older than the empty crate just built: touch them so cargo
# sees that loops itself changed.
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked --bin loops \
 && install -m 0755 target/release/loops /usr/local/bin/loops

# ---- run -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# git for the commands loops run (and a person's `docker exec … git log`); ca-certificates
# for HTTPS to model providers and channels. Nothing else: loops links libgit2 and rustls.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so the owner of the mounted workspace can be matched on the host.
RUN groupadd --gid 10001 loops \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/loops --shell /usr/sbin/nologin loops
COPY --from=build /usr/local/bin/loops /usr/local/bin/loops
USER loops
ENV LOOPS_LOG=info
VOLUME /workspace
WORKDIR /workspace
ENTRYPOINT ["loops"]
CMD ["run"]
