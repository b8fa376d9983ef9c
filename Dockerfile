# Production image of the uniter-tf pipeline components (Kubeflow Pipelines / Vertex AI Pipelines).
#
#   docker build -t IMAGE .            # then: python pipeline/kubeflow_v2_runner.py --image IMAGE ...
#
# - Base pinned to an exact tag (a digest is better where the registry can be reached at build time:
#   `FROM python:3.10.13-slim-bookworm@sha256:...`; CI cannot resolve one here, it has no Docker engine).
# - Only the runtime part of the lock: requirements.lock minus requirements-dev.txt (tests, linting,
#   sample images, the MiniLM test weights), cut by scripts/runtime_lock.py, installed with --no-deps
#   (the lock is complete; resolving this stack unpinned takes pip tens of minutes).
# - The project is installed as a package (not editable, no source checkout needed): the Trainers'
#   run_fn (`pipeline.pretrain_module.run_fn`, ...) import from site-packages.
# - Runs as the unprivileged user `uniter` (uid 1000, named by number so any host resolves it).
# Checked by tests/test_dockerfile.py (hadolint plus these rules); built by .ci/run where a Docker engine runs.
FROM python:3.10.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/uniter-tf

COPY requirements.lock requirements-dev.txt scripts/runtime_lock.py ./
RUN python runtime_lock.py requirements.lock requirements-dev.txt > runtime.lock \
    && pip install --no-deps -r runtime.lock \
    && rm runtime_lock.py

COPY pyproject.toml README.md ./
COPY uniter_tf ./uniter_tf
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
COPY configs ./configs
RUN pip install --no-deps . \
    && rm -rf uniter_tf components pipeline serving build ./*.egg-info \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin uniter

USER 1000:1000
WORKDIR /home/uniter
RUN python -c "import uniter_tf, components, pipeline.pretrain_module, serving, tfx; print('uniter-tf image ok, tfx', tfx.__version__)"

# No ENTRYPOINT: KubeflowV2DagRunner writes each component's command (the TFX v2 container launcher).
