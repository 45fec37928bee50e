"""
### Export a customer segment to ActiveCampaign and Constant Contact

Rebuild the segment tables from the unified customer profiles (`sql/refresh_segments.sql`), then
export one segment to ActiveCampaign and Constant Contact lists. It runs only when triggered
(no schedule), so unpausing it never starts an export by itself: "Trigger" shows a form to pick
the segment, the lists, or a dry run that checks everything and sends nothing. For exports that
follow every refresh, see `ciexport_asset_export.py`.

Connections used:

* `profiles_db`: the SQL database holding `customer_profiles` (SQLite here; any SQL connection works);
* `activecampaign_default`: API URL as host, API key as password;
* `constantcontact_default`: OAuth client id and secret, refresh token in the extras.

The list ids below are those of the provider's sandbox (`make sandbox`); use your own accounts' ids.
To use this DAG in your project, copy it together with its `sql/` folder.
Each export task returns its report (rows read, invalid, duplicates, accepted, rejected, job ids) as its
XCom value.

With the environment variable `CIEXPORT_STATE_DIR` set where every worker can reach it (e.g.
`s3://my-bucket/ciexport`; `make demo` uses a directory in its Airflow home), each export keeps a sync
state there and mirrors the segment: later runs send only new and changed contacts and remove those
the export added that left the segment. Without it, every run sends the whole segment.
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, Param

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

# Sandbox list ids: ActiveCampaign uses the number in the list's URL, Constant Contact the list's UUID.
AC_LISTS = {"1": "Newsletter (1)", "2": "VIP customers (2)", "3": "Lapsed customers (3)"}
CC_LISTS = {
    "11111111-1111-4111-8111-111111111111": "Newsletter",
    "22222222-2222-4222-8222-222222222222": "VIP customers",
    "33333333-3333-4333-8333-333333333333": "Lapsed customers",
}
# Where each export keeps its sync state (see the docstring); read when the DAG file is parsed.
STATE_DIR = os.environ.get("CIEXPORT_STATE_DIR", "").rstrip("/")
SYNC_MODE = "mirror" if STATE_DIR else "upsert"
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


with DAG(
    dag_id="ciexport_segment_export",
    dag_display_name="Export a customer segment to marketing lists",
    description="Refresh the customer segments, then export one to ActiveCampaign and Constant Contact.",
    doc_md=__doc__,
    schedule=None,  # manual runs only: see the docstring
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ciexport", "marketing"],
    # Render `{{ params.x }}` as the Python value (a list, a boolean), not as its text.
    render_template_as_native_obj=True,
    params={
        "segment": Param(
            "vip",
            type="string",
            enum=["vip", "lapsed"],
            values_display={"vip": "VIP customers", "lapsed": "Lapsed customers"},
            title="Segment",
            description="Which segment to export: the rows of the table segment_<segment>.",
        ),
        "ac_list_ids": Param(
            ["2"],
            type="array",
            items={"type": "string", "pattern": "^[0-9]+$"},
            minItems=1,
            examples=list(AC_LISTS),
            values_display=AC_LISTS,
            title="ActiveCampaign lists",
            description="Every exported contact is subscribed to these lists.",
        ),
        "cc_list_ids": Param(
            ["22222222-2222-4222-8222-222222222222"],
            type="array",
            items={"type": "string", "pattern": UUID_PATTERN},
            minItems=1,
            maxItems=50,
            examples=list(CC_LISTS),
            values_display=CC_LISTS,
            title="Constant Contact lists",
            description="Every exported contact is added to these lists (at most 50).",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Check the lists, fields and rows and report what would be sent, but send nothing.",
        ),
    },
) as dag:
    refresh_segments = SQLExecuteQueryOperator(
        task_id="refresh_segments",
        conn_id="profiles_db",
        # DROP + CREATE TABLE ... AS SELECT for segment_vip and segment_lapsed, in one transaction;
        # the file is found beside this DAG and rendered with Jinja (it includes one file per segment).
        sql="sql/refresh_segments.sql",
        split_statements=True,
    )

    export_to_activecampaign = ActiveCampaignSegmentExportOperator(
        task_id="export_to_activecampaign",
        activecampaign_conn_id="activecampaign_default",
        list_id="{{ params.ac_list_ids }}",
        sql_conn_id="profiles_db",
        sql="SELECT * FROM segment_{{ params.segment }}",
        # ActiveCampaign attribute -> segment column; custom fields by personalization tag.
        field_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "phone": "phone",
            "field:LOYALTY_TIER": "loyalty_tier",
            "field:FAVORITE_STORE": "favorite_store",
            "field:CITY": "city",
        },
        tags=["segment-{{ params.segment }}"],
        dry_run="{{ params.dry_run }}",
        # One state per segment and destination (the lists and mapping are checked against it).
        state_path=f"{STATE_DIR}/{{{{ params.segment }}}}-activecampaign.state" if STATE_DIR else None,
        sync_mode=SYNC_MODE,
    )

    export_to_constantcontact = ConstantContactSegmentExportOperator(
        task_id="export_to_constantcontact",
        constantcontact_conn_id="constantcontact_default",
        list_id="{{ params.cc_list_ids }}",
        sql_conn_id="profiles_db",
        sql="SELECT * FROM segment_{{ params.segment }}",
        # Constant Contact attribute -> segment column; custom fields as cf:<name>.
        field_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "phone": "phone",
            "cf:loyalty_tier": "loyalty_tier",
            "cf:favorite_store": "favorite_store",
            "cf:city": "city",
        },
        dry_run="{{ params.dry_run }}",
        state_path=f"{STATE_DIR}/{{{{ params.segment }}}}-constantcontact.state" if STATE_DIR else None,
        sync_mode=SYNC_MODE,
    )

    refresh_segments >> [export_to_activecampaign, export_to_constantcontact]
