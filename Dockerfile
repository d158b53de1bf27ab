# livestyle GPU server image. The NVIDIA driver comes from the host (container toolkit);
# torch's CUDA wheels carry the CUDA runtime, so a slim Python base is enough.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface
WORKDIR /app

# torch pinned exactly (never let a resolver pick a multi-GB build on its own).
ARG TORCH_SPEC="torch==2.11.0 torchvision==0.26.0"
RUN pip install $TORCH_SPEC

COPY pyproject.toml README.md ./
COPY server server
COPY signaling signaling
COPY pipeline pipeline
COPY static static
RUN pip install -e ".[diffusion,speed]"

EXPOSE 8080
CMD ["livestyle", "serve", "--host", "0.0.0.0", "--port", "8080"]
