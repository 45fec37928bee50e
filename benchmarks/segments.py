"""Segment queries shared by the benchmark's DAGs and ``make prod-test``'s (SQLite and PostgreSQL alike).

The DAG files import this module as ``benchmarks.segments``: every Airflow process the benchmarks
start has the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

#: The mirrored segment: the first N rows, or with ``churn`` the daily 2% change of them: every 200th
#: row left the segment, the next one's loyalty tier changed, and N/100 rows past the end are new.
SYNC_SQL = """
{%- set n = params.profiles | int %}{% set churn = params.churn %}
SELECT customer_id, email, first_name, last_name, phone, city, favorite_store,
       {% if churn %}CASE WHEN customer_id % 200 = 1 THEN 'Changed' ELSE loyalty_tier END{% else %}loyalty_tier{% endif %}
       AS loyalty_tier
FROM customer_profiles
WHERE customer_id <= {{ n + n // 100 if churn else n }}{% if churn %} AND customer_id % 200 != 0{% endif %}
ORDER BY customer_id
"""
