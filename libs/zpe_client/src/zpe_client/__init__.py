"""The ZPE client: wire models, ``ApiClient``, the ``zpe`` CLI and a Python API.

``Client(url, api_key=...).submit(...)`` returns a ``Job``; see ``zpe_client.notebook``.
It needs httpx and pydantic only (``ase`` for ASE objects: the ``ase`` extra).
"""

from zpe_client.http import ApiClient, ApiError
from zpe_client.notebook import Client, Job, JobFailed, Result

__all__ = ["ApiClient", "ApiError", "Client", "Job", "JobFailed", "Result"]
