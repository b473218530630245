# uv for the product Dockerfiles' `COPY --from=uv /uv` (stands in for ghcr.io/astral-sh/uv):
# the host's own uv binary, the one that wrote uv.lock. Context: a directory holding `uv`.
FROM scratch
COPY uv /uv
