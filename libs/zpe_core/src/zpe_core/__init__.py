"""Domain core of the ZPE compute service.

Everything that both the control plane (``zpe_api``) and the compute plane
(``zpe_worker``) need lives here: QE input parsing, the displacement plan,
engines, the analysis (forces -> Hessian -> frequencies -> ZPE), the job model,
and the ``JobStore`` / ``JobDispatcher`` ports with their backends.
Nothing in this package imports FastAPI.
"""

__version__ = "0.1.0"
