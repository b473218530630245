# Debian's redis-server for the ZPE_TEST_SERVERS=docker fixtures (tests/fixtures/servers.py).
ARG BASE_IMAGE=zpe-local/python:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
