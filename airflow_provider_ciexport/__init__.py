"""Apache Airflow provider that exports customer segments to marketing lists."""

from __future__ import annotations

import warnings

__version__ = "0.1.0"

# Airflow's in-process execution API (`airflow dags test`, `dag.test()`) imports svcs, whose FastAPI
# integration imports `fastapi.testclient` for a type; Starlette 1.2+ then warns, on every run, that
# its test client falls back to httpx unless httpx2 is installed. No test client is used there, so
# the warning says nothing to a user of this provider: it is silenced for that one import only (a
# direct `import starlette.testclient` elsewhere still warns).
warnings.filterwarnings(
    "ignore",
    message=r"Using `httpx` with `starlette\.testclient` is deprecated",
    category=UserWarning,
    module=r"fastapi\.testclient",
)
