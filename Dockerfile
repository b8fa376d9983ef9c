# Container image of the uniter-tf pipeline components (Kubeflow Pipelines / Vertex AI Pipelines).
#
#   docker build -t IMAGE .            # then: UNITER_PIPELINE_IMAGE=IMAGE python pipeline/kubeflow_v2_runner.py
#
# Installs the fully pinned lock first (one layer, cached while the lock is unchanged), then the project
# itself without dependencies, exactly as scripts/bootstrap.sh does for the local venv.
FROM python:3.10

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /pipeline

COPY requirements.lock requirements-extra.in ./
# --no-deps: the lock is complete; resolving this stack unpinned takes pip tens of minutes.
RUN pip install --no-deps -r requirements.lock \
    && pip install --no-deps -r requirements-extra.in

COPY pyproject.toml README.md ./
COPY uniter_tf ./uniter_tf
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
COPY configs ./configs
RUN pip install --no-deps . \
    && python -c "import uniter_tf, components, pipeline, serving, tfx; print('uniter-tf image ok, tfx', tfx.__version__)"

# No ENTRYPOINT: KubeflowV2DagRunner writes each component's command (the TFX v2 container launcher).
