"""What Airflow discovers about this provider (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_ciexport import __version__

_AC = "ActiveCampaign"
_CC = "Constant Contact"

# The extras both hooks read the same way (hooks/base.py): how long to wait for an answer, and for
# throttling to end.
_WAIT_FIELDS: dict[str, Any] = {
    "timeout": {
        "label": "Read timeout (seconds)",
        "description": "How long to wait for an answer before retrying (default 120).",
        "schema": {"type": ["number", "null"], "default": 120, "minimum": 1},
    },
    "throttle_timeout": {
        "label": "Throttled for at most (seconds)",
        "description": (
            "Rate-limit answers are waited out; the task fails only when nothing has got "
            "through for this long (default 900, 15 minutes)."
        ),
        "schema": {"type": ["number", "null"], "default": 900, "minimum": 1},
    },
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata that Airflow validates against its provider-info schema."""
    return {
        "package-name": "airflow-provider-ciexport",
        "name": "Customer segment export (ActiveCampaign, Constant Contact)",
        "description": "Export customer segments to ActiveCampaign and Constant Contact lists.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _AC,
                "external-doc-url": "https://developers.activecampaign.com/reference/overview",
                "tags": ["service"],
            },
            {
                "integration-name": _CC,
                "external-doc-url": "https://developer.constantcontact.com/api_guide/index.html",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {
                "integration-name": _AC,
                "python-modules": ["airflow_provider_ciexport.hooks.activecampaign"],
            },
            {
                "integration-name": _CC,
                "python-modules": ["airflow_provider_ciexport.hooks.constantcontact"],
            },
        ],
        "operators": [
            {
                "integration-name": _AC,
                "python-modules": ["airflow_provider_ciexport.operators.activecampaign"],
            },
            {
                "integration-name": _CC,
                "python-modules": ["airflow_provider_ciexport.operators.constantcontact"],
            },
        ],
        "extra-links": [
            "airflow_provider_ciexport.links.ActiveCampaignListLink",
            "airflow_provider_ciexport.links.ConstantContactListLink",
        ],
        "connection-types": [
            {
                "connection-type": "activecampaign",
                "hook-class-name": "airflow_provider_ciexport.hooks.activecampaign.ActiveCampaignHook",
                "hook-name": _AC,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "API URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://youraccount.api-us1.com (Settings > Developer)",
                        "password": "API key from Settings > Developer",
                    },
                },
                "conn-fields": {
                    "requests_per_second": {
                        "label": "Requests per second",
                        "description": "Account-wide request rate (ActiveCampaign allows 5/s). "
                        "Change only if ActiveCampaign raised your limit.",
                        "schema": {"type": ["number", "null"], "default": 5, "minimum": 0.1},
                    },
                    "imports_per_minute": {
                        "label": "Bulk imports per minute",
                        "description": "Multi-contact bulk imports per minute (ActiveCampaign allows 100).",
                        "schema": {"type": ["number", "null"], "default": 100, "minimum": 1},
                    },
                    **_WAIT_FIELDS,
                },
            },
            {
                "connection-type": "constantcontact",
                "hook-class-name": "airflow_provider_ciexport.hooks.constantcontact.ConstantContactHook",
                "hook-name": _CC,
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port", "extra"],
                    "relabeling": {"login": "Client ID (API key)", "password": "Client secret"},
                    "placeholders": {
                        "login": "API key of your app (then open Extra Fields: the Refresh token is required)",
                        "password": "Client secret of the same app",
                    },
                },
                "conn-fields": {
                    "refresh_token": {
                        "label": "Refresh token (required)",
                        "description": "Required: without it no export can run. The token from the app's "
                        "first authorization. To get one, run "
                        "python -m airflow_provider_ciexport.tools.constantcontact_auth --client-id <your API key> "
                        "on any machine with a browser (or add --flow device); it prints the token. A "
                        "rotated token is kept by the provider, so this field needs changing only after a "
                        "new authorization.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "api_base_url": {
                        "label": "API base URL",
                        "description": "Leave empty for https://api.cc.email/v3; set only for the sandbox.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "oauth_url": {
                        "label": "OAuth token endpoint",
                        "description": "Leave empty for Constant Contact's own; set only for the sandbox "
                        "(e.g. http://127.0.0.1:8025/oauth2/default/v1/token). The older extra token_url "
                        "is still read.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "requests_per_second": {
                        "label": "Requests per second",
                        "description": "Request rate per API key (Constant Contact allows 4/s).",
                        "schema": {"type": ["number", "null"], "default": 4, "minimum": 0.1},
                    },
                    **_WAIT_FIELDS,
                },
            },
        ],
    }
