"""Exceptions raised by the provider.

Every message says what is wrong and how to fix it, and never contains personal data or secrets.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class CiExportError(AirflowException):
    """Base class of every error the provider raises; Airflow may retry the task."""


#: What an error raised before any contact was sent (or removed) says, so the user knows a retry after
#: the fix starts from a clean slate.
NOTHING_SENT = "Nothing was sent."


def say_nothing_was_sent(error: CiExportError) -> CiExportError:
    """Add "Nothing was sent." to the message of ``error`` (once), raised before anything was sent."""
    message = str(error)
    if "nothing was sent" not in message.lower():
        error.args = (f"{message.rstrip()} {NOTHING_SENT}",)
    return error


class ExportConfigurationError(AirflowFailException, CiExportError):
    """The task's parameters, the source's shape or the connection are wrong; a retry cannot help."""


class SegmentSourceError(ExportConfigurationError):
    """The segment source cannot be read as configured (missing file, bad format, failing query)."""


class DestinationAuthError(AirflowFailException, CiExportError):
    """The destination refused the credentials (401/403, ``invalid_grant``, ``invalid_client``)."""


class DestinationQuotaError(AirflowFailException, CiExportError):
    """A quota that does not reset within the task (Constant Contact's daily quota) is spent."""


class DestinationApiError(CiExportError):
    """The destination answered with an error that retrying did not resolve.

    :param status: the HTTP status code, or ``None`` when no answer arrived.
    :param message: what went wrong, free of personal data.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DestinationThrottledError(DestinationApiError):
    """The API refused every request for its rate limit, with no progress for ``throttle_timeout``."""


class ExportIncompleteError(CiExportError):
    """Some contacts could not be exported; the message says how many were and were not."""


class ExportThresholdError(AirflowFailException, CiExportError):
    """The export finished, but more of its contacts were refused, or of its rows invalid, than a
    threshold (``max_rejected_fraction``, ``max_invalid_fraction``) allows.

    Not retried: the export is complete, and a retry would only send the refused contacts again.
    """
