"""What one import (or removal) job came to: the one type the hooks, the destinations and the engine share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobResult:
    """Where one job (an ActiveCampaign batch, a Constant Contact activity) stands, or how it ended.

    A hook's ``import_status`` gives the job as the API reports it; a destination turns a finished one
    into what the engine counts (``done`` is then always true).

    :param ok: the job completed and its counts are final; ``False`` while it runs, or when it ended
        failed and may be sent again.
    :param accepted: contacts the destination took (0 until ``ok``).
    :param rejected: contacts it refused: bad data, excluded or unsubscribed (0 until ``ok``).
    :param state: the API's own name of the state (``"completed"``, ``"failed"``, ...), for messages.
    :param refused: the emails of the refused contacts, when the API names them (ActiveCampaign's
        ``failure`` list), else ``None``.
    :param done: the job reached a final state; nothing will change any more.
    :param total: contacts the API says it received, when it says (Constant Contact), else ``None``.
    :param messages: the job's own error messages (Constant Contact's ``activity_errors``): free text
        that may quote a contact, read to tell which contact was refused, never logged.
    """

    ok: bool
    accepted: int = 0
    rejected: int = 0
    state: str = "completed"
    refused: tuple[str, ...] | None = None
    done: bool = True
    total: int | None = None
    messages: tuple[str, ...] = ()
