"""Apache Airflow provider that exports customer segments to marketing lists."""

from __future__ import annotations

__version__ = "0.1.0"
