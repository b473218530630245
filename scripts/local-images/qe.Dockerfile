# The worker's local base: Debian's python3 plus what services/worker/Dockerfile installs
# (pw.x, its pseudopotentials, Open MPI, tini), so building the worker image downloads them once.
ARG BASE_IMAGE=zpe-local/python:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends quantum-espresso quantum-espresso-data openmpi-bin tini \
    && rm -rf /var/lib/apt/lists/*
