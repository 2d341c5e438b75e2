# rltune on a CUDA PyTorch base. Build: docker build -t rltune .   Run: docker run --gpus all rltune train r.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /opt/rltune
COPY pyproject.toml README.md ./
COPY rltune ./rltune
COPY rewards ./rewards
COPY recipes ./recipes
RUN pip install --no-cache-dir ".[gpu]"
ENV HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ENTRYPOINT ["rltune"]
CMD ["--help"]
