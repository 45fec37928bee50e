"""Sandbox behaviour knobs, changeable at runtime through ``/_sandbox/config``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

ACRateLimitStyle = Literal["429", "400", "503"]
CCOverlongMode = Literal["reject_contact", "truncate", "reject_request"]
#: How Constant Contact error bodies look: a list of error objects, a single object, or as documented
#: (429 answers as one object, every other error as a list).
CCErrorShape = Literal["list", "object", "documented"]
CCHeaderStyle = Literal["snake", "title"]
#: How the rate limits and latency behave: the sandbox's own model, or the ``strict`` one
#: (:mod:`airflow_provider_ciexport.tools.sandbox.strict`).
TimingModel = Literal["sandbox", "strict"]


class ConfigError(ValueError):
    """An override names an unknown setting or has the wrong type."""


@dataclass(frozen=True)
class SandboxConfig:
    """Runtime settings of the sandbox.

    Durations marked *scaled* are divided by ``rate_scale``, like the rate-limit windows, so a
    benchmark running at ``rate_scale=20`` sees jobs and "per minute" limits 20 times faster.
    """

    #: Multiplies every rate limit (and divides scaled durations).
    rate_scale: float = 1.0
    #: Every API call (not the control API) is answered this long after it arrives; the work is done
    #: within it, unless the work takes longer.
    latency_s: float = 0.0
    #: Added to ``latency_s`` for the two import POSTs.
    import_latency_s: float = 0.0
    #: ``sandbox``: windows count admitted requests, checked once the body is read, fixed latency.
    #: ``strict``: windows count every request, refused ones too, checked on arrival; the import
    #: latency is drawn per request around ``import_latency_s`` and every call gets up to
    #: ``strict_jitter_s`` more.
    timing: TimingModel = "sandbox"
    #: The strict model's network jitter: up to this many (unscaled) seconds more on every API call.
    strict_jitter_s: float = 0.02
    #: Keep request bodies (truncated to 64 KB) in the request log. Off by default: import bodies
    #: carry the segment's emails and token requests the refresh token.
    record_bodies: bool = False
    #: How many requests the log keeps.
    request_log_size: int = 5000
    #: Bodies in the log are dropped, oldest first, beyond this many bytes in total.
    request_log_body_budget_bytes: int = 64 * 1024 * 1024

    #: Status for a missing or wrong ``Api-Token`` (the real API's is unconfirmed: 401 or 403).
    ac_auth_error_status: int = 403
    #: ``/import/info`` answers ``"status": false`` for this long after the POST (scaled).
    ac_info_false_s: float = 1.0
    #: After the ``false`` period the job is waiting/active for this long, then completed (scaled).
    ac_job_duration_s: float = 0.5
    #: How an exceeded rate limit is answered: 429 + Retry-After, the 400 body, or 503.
    ac_rate_limit_style: ACRateLimitStyle = "429"
    #: Emails on the account's exclusion list: skipped by imports and reported in ``failure``.
    ac_exclusion_list: tuple[str, ...] = ()
    ac_requests_per_second: int = 5
    ac_imports_per_minute: int = 100
    #: Another app (a CRM, a form tool) spending the same account's budget: its requests a second and
    #: bulk imports a minute, evenly spaced, counted in the same windows (scaled like the limits).
    ac_other_app_requests_per_second: float = 0.0
    ac_other_app_imports_per_minute: float = 0.0

    #: Activities go initialized -> processing -> completed over this long (scaled).
    cc_job_duration_s: float = 0.5
    #: Access token lifetime (scaled).
    cc_access_token_ttl_s: float = 86400.0
    #: An access token answers this many API requests, then 401 (0: no limit): tokens expiring under
    #: load, or revoked while another worker refreshes, so that a freshly issued one can be refused.
    cc_access_token_max_requests: int = 0
    #: Each refresh returns a new refresh token and invalidates the old one.
    cc_rotating_refresh_tokens: bool = False
    cc_requests_per_second: int = 4
    #: Another app's requests a second on the same API key (scaled like the limits).
    cc_other_app_requests_per_second: float = 0.0
    #: Requests per (scaled) day.
    cc_daily_quota: int = 10000
    #: Longest email accepted by the JSON import (the spec says 50 there, 80 elsewhere).
    cc_email_max_length: int = 80
    #: What an over-long value in a JSON import does: the contact counts in ``error_count`` and
    #: is not imported, the value is cut to the limit (an over-long email still makes the contact
    #: an error), or the whole request is rejected (400). Every case is a recorded violation.
    cc_overlong_values: CCOverlongMode = "reject_contact"
    #: The shape of every Constant Contact error body (the real API's varies by endpoint and status);
    #: by default as documented: 429 answers as one object, other errors as a list.
    cc_error_shape: CCErrorShape = "documented"
    #: The vendor guide's warning made real: a JSON import into a list re-adds a contact who
    #: unsubscribed (and records the violation ``cc.violation.resubscribed_unsubscribed_contact``)
    #: instead of counting it in ``cannot_add_to_list_count``.
    cc_import_resubscribes: bool = False
    #: Whether an import's ``activity_errors`` messages say which contact they are about
    #: (``import_data[<n>]: ...``); the spec documents them as free text only, so a client must cope
    #: with messages that do not (and with unsubscribed contacts, counted with no message at all).
    cc_activity_errors_name_rows: bool = True
    #: Header style of ``contact_exports`` CSV files (unconfirmed upstream): ``snake``
    #: (``contact_id,email_address``) or ``title`` (``Contact Id,Email address``).
    cc_export_header_style: CCHeaderStyle = "snake"
    #: ``interval`` returned by the device authorization endpoint, seconds.
    cc_device_interval_s: int = 5

    def scaled(self, seconds: float) -> float:
        """A duration shortened by ``rate_scale``."""
        return seconds / self.rate_scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view of every public setting."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def with_overrides(self, overrides: dict[str, Any] | None) -> SandboxConfig:
        """A copy with ``overrides`` applied, after checking names, types and ranges.

        :raises ConfigError: on an unknown name or a bad value.
        """
        if not overrides:
            return self
        known = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ConfigError(f"unknown setting {name!r}")
            changes[name] = _coerce(name, getattr(self, name), value)
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Check ranges and enumerations.

        :raises ConfigError: when a value is out of range.
        """
        if self.rate_scale <= 0:
            raise ConfigError("rate_scale must be > 0")
        for name in (
            "latency_s",
            "import_latency_s",
            "strict_jitter_s",
            "ac_info_false_s",
            "ac_job_duration_s",
            "ac_other_app_requests_per_second",
            "ac_other_app_imports_per_minute",
            "cc_other_app_requests_per_second",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.cc_job_duration_s < 0 or self.cc_access_token_ttl_s <= 0:
            raise ConfigError("cc durations must be positive")
        if self.cc_access_token_max_requests < 0:
            raise ConfigError("cc_access_token_max_requests must be >= 0")
        if self.ac_auth_error_status not in (401, 403):
            raise ConfigError("ac_auth_error_status must be 401 or 403")
        if self.ac_rate_limit_style not in get_args(ACRateLimitStyle):
            raise ConfigError(f"ac_rate_limit_style must be one of {get_args(ACRateLimitStyle)}")
        if self.timing not in get_args(TimingModel):
            raise ConfigError(f"timing must be one of {get_args(TimingModel)}")
        if self.cc_export_header_style not in get_args(CCHeaderStyle):
            raise ConfigError(f"cc_export_header_style must be one of {get_args(CCHeaderStyle)}")
        if self.cc_overlong_values not in get_args(CCOverlongMode):
            raise ConfigError(f"cc_overlong_values must be one of {get_args(CCOverlongMode)}")
        if self.cc_error_shape not in get_args(CCErrorShape):
            raise ConfigError(f"cc_error_shape must be one of {get_args(CCErrorShape)}")
        for name in (
            "request_log_size",
            "ac_requests_per_second",
            "ac_imports_per_minute",
            "cc_requests_per_second",
            "cc_daily_quota",
            "cc_email_max_length",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")


def _coerce(name: str, current: Any, value: Any) -> Any:
    """``value`` for the setting ``name``, converted to the type of its ``current`` value.

    :raises ConfigError: when ``value`` cannot stand for that type.
    """
    for kind, coerce in _COERCERS:
        if isinstance(current, kind):
            return coerce(name, value)
    raise _wrong_type(name, value)


def _wrong_type(name: str, value: Any) -> ConfigError:
    return ConfigError(f"{name} has the wrong type ({type(value).__name__})")


def _coerce_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a boolean")
    return value


def _coerce_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    raise _wrong_type(name, value)


def _coerce_float(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _wrong_type(name, value)


def _coerce_str(name: str, value: Any) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise _wrong_type(name, value)


def _coerce_str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _wrong_type(name, value)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings")
    return tuple(value)


#: How a new value is converted, by the type of the setting's current value; bool comes before int,
#: its base class.
_COERCERS: tuple[tuple[type, Callable[[str, Any], Any]], ...] = (
    (bool, _coerce_bool),
    (int, _coerce_int),
    (float, _coerce_float),
    (str, _coerce_str),
    (tuple, _coerce_str_tuple),
)
