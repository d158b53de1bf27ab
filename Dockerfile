# livestyle GPU server image. The NVIDIA driver comes from the host (container toolkit);
# torch's CUDA wheels carry the CUDA runtime, so a slim Python base is enough.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface
WORKDIR /app

# torch pinned exactly (never let a resolver pick a multi-GB build on its own), in its own layer.
ARG TORCH_SPEC="torch==2.11.0 torchvision==0.26.0"
RUN pip install $TORCH_SPEC

# The dependencies, read from pyproject.toml, in their own layer: a code change does not
# download them again.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['diffusion'] + extras['speed']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The whole build context (.dockerignore keeps out git, venvs, caches and .env): no list of
# packages here to keep in step with pyproject.toml.
COPY . .
RUN pip install --quiet --no-deps -e .

EXPOSE 8080
CMD ["livestyle", "serve", "--host", "0.0.0.0", "--port", "8080"]
