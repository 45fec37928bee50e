"""What both vendors' export destinations share: the engine's adapter to one of this provider's hooks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.hooks.base import ImportEncoder


class ImportClient(Protocol):
    """What a destination needs of its hook beyond the vendor's own calls."""

    #: The least time between two lines the hook logs about a long wait.
    progress_interval_s: float

    @property
    def requests_made(self) -> int:
        """API requests made so far."""

    def import_status(self, job_id: str) -> JobResult:
        """Where an import (or removal) job stands."""

    def share_account(self) -> AbstractContextManager[object]:
        """Held while contacts are sent, so exports on one account divide its rate."""


class HookDestination(Destination):
    """A :class:`Destination` that talks through a hook and builds bodies with its :class:`ImportEncoder`.

    The body's envelope, each contact's bytes, the account share, the request count and how a job's
    end is read are alike for every vendor; what a completed job means is the vendor's
    (:meth:`completed`).
    """

    hook: ImportClient
    _encoder: ImportEncoder

    def envelope(self) -> tuple[bytes, bytes]:
        return self._encoder.prefix, self._encoder.suffix

    def set_progress_interval(self, interval_s: float) -> None:
        """The hook's lines about long waits (throttling, an export being prepared) follow it too."""
        self.hook.progress_interval_s = interval_s

    def encode(self, contact: Mapping[str, str]) -> bytes:
        return self._encoder.encode(contact)

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        return self.job_result(job_id, lambda status: self.completed(status, batch))

    def completed(self, status: JobResult, batch: Batch) -> JobResult:
        """What the destination took of ``batch``, from the status of its completed import job."""
        raise NotImplementedError

    def job_result(self, job_id: str, completed: Callable[[JobResult], JobResult]) -> JobResult | None:
        """The job's result once it ended (``completed`` reads a job that completed), else ``None``."""
        status = self.hook.import_status(job_id)
        if not status.done:
            return None
        if not status.ok:
            return JobResult(ok=False, state=status.state)
        return completed(status)

    def share_account(self) -> AbstractContextManager[object]:
        return self.hook.share_account()

    @property
    def requests_made(self) -> int:
        return self.hook.requests_made
