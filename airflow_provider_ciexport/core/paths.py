"""Checks on storage paths that a template or a Param may have rendered (``state_path``, ``source_path``)."""

from __future__ import annotations

import re

from airflow_provider_ciexport.exceptions import ExportConfigurationError

_ENCODED_DOTS = re.compile(r"%2e", re.IGNORECASE)


def check_storage_path(uri: str, parameter: str) -> None:
    """Refuse a (rendered) path or URI that could reach outside its folder, before anything is read.

    A ``..`` segment (also percent-encoded), a backslash (also ``%5c``) or a control character is
    refused: a Param rendered into the path must not choose which file the export reads or writes.

    :param uri: the rendered path: local or an object-storage URI.
    :param parameter: the operator parameter it came from, named in the message (``"state_path"``).
    :raises ExportConfigurationError: naming the parameter, the problem and the fix.
    """
    text = _ENCODED_DOTS.sub(".", uri)
    advice = (
        f"if a Param is rendered into {parameter}, give it an 'enum' or a 'pattern' such as '^[a-z0-9_-]+$'."
    )
    if "\\" in text or "%5c" in text.lower() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ExportConfigurationError(
            f"{parameter} holds a backslash or a control character, which could make it point elsewhere "
            "than it reads; nothing was read. Nothing was sent. Use '/' between folders; " + advice
        )
    _, _, rest = text.rpartition("://")
    if ".." in rest.split("/"):
        raise ExportConfigurationError(
            f"{parameter} has a '..' segment, so it could point outside its folder (e.g. a Param rendered "
            "into it); nothing was read. Nothing was sent. Write the path without '..'; " + advice
        )
