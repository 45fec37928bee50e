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

Each export mirrors the segment with a sync state kept under `STATE_DIR` (set at the top of the file):
the first run sends every contact, later runs send only new and changed contacts and remove from
the lists the contacts this export added that left the segment (never anyone who unsubscribed).
Each run also writes an outcome log under `OUTCOMES_DIR`: a row per segment row, named by its
`customer_id`, saying what happened to it (accepted, refused, invalid, duplicate, unchanged, removed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pendulum
from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, Param

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

# The one setting to change when you copy this DAG: where each export keeps its sync state, the
# record of what it sent (it holds email addresses: keep it private). Use a URI every worker can
# reach, e.g. "s3://my-bucket/ciexport" or "gs://my-bucket/ciexport". This default, a folder in the
# Airflow home, works only while every task runs on this one machine (LocalExecutor, `airflow dags
# test`, `make demo`). Move the state files along if you change it later: without them the next run
# is a first sync again (it sends everything and takes the lists' members as ones it did not add).
STATE_DIR = (
    Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser().resolve() / "ciexport-state"
).as_uri()

# Where each run writes its outcome log (one CSV file per export and run, rows named by customer_id,
# no e-mail addresses): the same kind of place as STATE_DIR. Write ".parquet" with the provider's
# "parquet" extra, or a table with outcomes_table and outcomes_conn_id.
OUTCOMES_DIR = (
    Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser().resolve() / "ciexport-outcomes"
).as_uri()

# Sandbox list ids: ActiveCampaign uses the number in the list's URL, Constant Contact the list's UUID.
AC_LISTS = {"1": "Newsletter (1)", "2": "VIP customers (2)", "3": "Lapsed customers (3)"}
CC_LISTS = {
    "11111111-1111-4111-8111-111111111111": "Newsletter",
    "22222222-2222-4222-8222-222222222222": "VIP customers",
    "33333333-3333-4333-8333-333333333333": "Lapsed customers",
}
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def lists_key(list_ids: list[str]) -> str:
    """The part of a ``state_path`` that names the lists: each set of lists keeps its own sync state,
    so a run triggered with other lists never meets (and is never refused by) the state of these.
    The ids themselves when short, else a digest of them (a file name is at most 255 bytes)."""
    ids = sorted({str(int(i)) if str(i).isdigit() else str(i).lower() for i in list_ids})
    joined = "+".join(ids)
    return joined if len(joined) <= 80 else "h" + hashlib.sha256(joined.encode()).hexdigest()[:24]


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
    user_defined_filters={"lists_key": lists_key},
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

    # [START howto_operator_ciexport_activecampaign]
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
        # One state per segment, destination and set of lists (a run refuses a state written for other
        # lists rather than replace it), under STATE_DIR, set at the top of this file.
        state_path=STATE_DIR
        + "/{{ params.segment }}-activecampaign-{{ params.ac_list_ids | lists_key }}.state",
        sync_mode="mirror",
        # What happened to every row, keyed by the segment's customer_id (see the Outcome log page).
        outcomes_path=OUTCOMES_DIR + "/{{ dag.dag_id }}/{{ run_id }}/activecampaign.csv",
        outcome_key="customer_id",
    )
    # [END howto_operator_ciexport_activecampaign]

    # [START howto_operator_ciexport_constantcontact]
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
        state_path=STATE_DIR
        + "/{{ params.segment }}-constantcontact-{{ params.cc_list_ids | lists_key }}.state",
        sync_mode="mirror",
        outcomes_path=OUTCOMES_DIR + "/{{ dag.dag_id }}/{{ run_id }}/constantcontact.csv",
        outcome_key="customer_id",
    )
    # [END howto_operator_ciexport_constantcontact]

    refresh_segments >> [export_to_activecampaign, export_to_constantcontact]
