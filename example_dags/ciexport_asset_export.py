"""
### Export the VIP segment whenever it is refreshed (Asset-driven)

Two DAGs joined by an Asset instead of a task dependency:

* `ciexport_refresh_vip_segment` rebuilds the `segment_vip` table (`sql/refresh_segment_vip.sql`)
  every day and declares the `segment_vip` Asset as its outlet;
* `ciexport_export_vip_segment` has that Asset as its schedule: every successful refresh starts a
  real export of the segment to ActiveCampaign and Constant Contact, whoever triggered the refresh.

Both DAGs are paused when they appear. Unpausing the refresh DAG (the UI's trigger dialog does it
by default) starts its daily runs, and with the export DAG unpaused every refresh exports for real:
there is no dry run here. To try the export safely, use `ciexport_segment_export` with "Dry run".

The refresh side could as well live in another team's DAG: the export only needs the Asset.
The list ids are those of the provider's sandbox; use your own accounts' ids. To use these DAGs in
your project, copy the file together with its `sql/` folder.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, Asset

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

# The segment table, as an Asset: <scheme>://<database>/<table>.
SEGMENT_VIP = Asset(uri="sqlite://profiles/segment_vip", name="segment_vip")

with DAG(
    dag_id="ciexport_refresh_vip_segment",
    dag_display_name="Refresh the VIP segment",
    doc_md=__doc__,
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ciexport", "marketing"],
):
    SQLExecuteQueryOperator(
        task_id="refresh_segment_vip",
        conn_id="profiles_db",
        # DROP + CREATE TABLE segment_vip AS SELECT ... FROM customer_profiles WHERE ...: a file beside
        # this DAG, rendered with Jinja.
        sql="sql/refresh_segment_vip.sql",
        split_statements=True,
        outlets=[SEGMENT_VIP],
    )

with DAG(
    dag_id="ciexport_export_vip_segment",
    dag_display_name="Export the VIP segment when it changes",
    doc_md=__doc__,
    schedule=[SEGMENT_VIP],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ciexport", "marketing"],
):
    ActiveCampaignSegmentExportOperator(
        task_id="export_vip_to_activecampaign",
        activecampaign_conn_id="activecampaign_default",
        list_id=2,  # "VIP customers"
        sql_conn_id="profiles_db",
        sql="SELECT * FROM segment_vip",
        field_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "field:LOYALTY_TIER": "loyalty_tier",
        },
    )

    ConstantContactSegmentExportOperator(
        task_id="export_vip_to_constantcontact",
        constantcontact_conn_id="constantcontact_default",
        list_id="22222222-2222-4222-8222-222222222222",  # "VIP customers"
        sql_conn_id="profiles_db",
        sql="SELECT * FROM segment_vip",
        field_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "cf:loyalty_tier": "loyalty_tier",
        },
    )
