# The Cloud Tasks emulator (gcloud-tasks-emulator from PyPI; it pins protobuf<5, so it has a
# virtualenv of its own, as on the host).
ARG BASE_IMAGE=zpe-local/python:bookworm
ARG UV_IMAGE=zpe-local/uv:0.13
FROM ${UV_IMAGE} AS uv
FROM ${BASE_IMAGE}
COPY --from=uv /uv /usr/local/bin/uv
RUN uv venv --quiet --python /usr/bin/python3 /opt/tasks-emulator \
    && uv pip install --quiet --python /opt/tasks-emulator/bin/python gcloud-tasks-emulator \
    && rm -rf /root/.cache
EXPOSE 8123
ENTRYPOINT ["/opt/tasks-emulator/bin/gcloud-tasks-emulator"]
