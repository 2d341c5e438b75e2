# rltune on a CUDA PyTorch base. Build: docker build -t rltune .   Run: docker run --gpus all rltune train r.yaml
# Runs as the unprivileged user `rltune` (uid 1000), in /work. bubblewrap sandboxes the code_exec reward; inside
# a container it needs user namespaces (e.g. docker run --security-opt seccomp=unconfined), else point the reward
# at a sandbox service (docs/rewards.md).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash rltune \
    && mkdir -p /work && chown rltune:rltune /work
WORKDIR /opt/rltune
COPY pyproject.toml README.md ./
COPY rltune ./rltune
COPY rewards ./rewards
COPY recipes ./recipes
RUN pip install --no-cache-dir ".[gpu]"
ENV HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
USER rltune
WORKDIR /work
ENTRYPOINT ["rltune"]
CMD ["--help"]
