# Container images of llamagen: the binary and the native libraries it loads, as
# scripts/package.sh lays them out (docs/deploy.md), on Debian 12.
#
#   docker build -t llamagen-rs:cpu .                           # CPU workers (about 0.9 GB)
#   docker build --build-arg FLAVOR=cuda -t llamagen-rs:cuda .  # GPU hosts (about 4.6 GB)
#
# The two flavours build the same binary; they differ in what is packed beside it. cpu: what the
# binary links (libtorch's CPU half) and ONNX Runtime's CPU build. cuda: all of libtorch, the
# CUDA, cuDNN and NCCL libraries of the torch wheel, and ONNX Runtime's GPU build with its CUDA
# execution provider. A cuda image needs only the NVIDIA driver on the host (the NVIDIA
# Container Toolkit mounts it: `docker run --gpus all`, or a Kubernetes nvidia.com/gpu limit).
# The build stage installs through scripts/setup.sh, as a bare host does.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
ARG FLAVOR=cpu
WORKDIR /src
# The native stack first, so that a source change reuses this layer (torch is ~5 GB).
COPY scripts/setup.sh scripts/requirements.txt scripts/
RUN case "$FLAVOR" in cpu|cuda) ;; *) echo "FLAVOR must be cpu or cuda" >&2; exit 1 ;; esac \
 && LLAMAGEN_ONNXRUNTIME="$([ "$FLAVOR" = cuda ] && echo gpu || echo cpu)" scripts/setup.sh --build \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p llamagen-cli \
 && scripts/package.sh $([ "$FLAVOR" = cuda ] || echo --cpu) /opt/llamagen

FROM ${BASE_IMAGE}
COPY --from=build /opt/llamagen /opt/llamagen
# The data folder is /data, where a volume is mounted: with the CLI's default (`data` under the
# working directory) a pod's shards and checkpoints would stay in its container and go with it.
ENV PATH=/opt/llamagen/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LLAMAGEN_DATA_DIR=/data \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN useradd --create-home --uid 1000 llamagen && mkdir /data && chown llamagen:llamagen /data
USER llamagen
WORKDIR /home/llamagen
ENTRYPOINT ["llamagen"]
CMD ["doctor"]
