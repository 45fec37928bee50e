"""The deterministic state every sandbox starts from (and returns to on reset).

ActiveCampaign
    API key ``sandbox-ac-key`` (header ``Api-Token``); lists 1 "Newsletter", 2 "VIP customers",
    3 "Lapsed customers"; custom fields 1 ``LOYALTY_TIER`` "Loyalty tier", 2 ``FAVORITE_STORE``
    "Favorite store", 3 ``CITY`` "City". No contacts.

Constant Contact
    OAuth client ``sandbox-client-id`` / ``sandbox-client-secret``; refresh token
    ``sandbox-refresh-token`` (scope ``contact_data offline_access``); no access token (refresh
    first). Lists ``11111111-1111-4111-8111-111111111111`` "Newsletter",
    ``22222222-2222-4222-8222-222222222222`` "VIP customers",
    ``33333333-3333-4333-8333-333333333333`` "Lapsed customers"; custom fields ``loyalty_tier``,
    ``favorite_store``, ``city``. No contacts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class ACFieldSeed:
    """An ActiveCampaign custom field."""

    id: int
    perstag: str
    title: str
    type: str = "text"


@dataclass(frozen=True)
class CCFieldSeed:
    """A Constant Contact custom field (imported as ``cf:<name>``)."""

    custom_field_id: str
    name: str
    label: str
    type: str = "string"


AC_API_KEY = "sandbox-ac-key"
AC_LIST_NEWSLETTER = 1
AC_LIST_VIP = 2
AC_LIST_LAPSED = 3
AC_LISTS: Mapping[int, str] = MappingProxyType(
    {AC_LIST_NEWSLETTER: "Newsletter", AC_LIST_VIP: "VIP customers", AC_LIST_LAPSED: "Lapsed customers"}
)
AC_FIELDS: tuple[ACFieldSeed, ...] = (
    ACFieldSeed(1, "LOYALTY_TIER", "Loyalty tier"),
    ACFieldSeed(2, "FAVORITE_STORE", "Favorite store"),
    ACFieldSeed(3, "CITY", "City"),
)

CC_CLIENT_ID = "sandbox-client-id"
# Public, made-up credentials of the fake account (not secrets).
CC_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105
CC_REFRESH_TOKEN = "sandbox-refresh-token"  # noqa: S105
CC_REFRESH_TOKEN_SCOPE = "contact_data offline_access"  # noqa: S105
CC_LIST_NEWSLETTER = "11111111-1111-4111-8111-111111111111"
CC_LIST_VIP = "22222222-2222-4222-8222-222222222222"
CC_LIST_LAPSED = "33333333-3333-4333-8333-333333333333"
CC_LISTS: Mapping[str, str] = MappingProxyType(
    {CC_LIST_NEWSLETTER: "Newsletter", CC_LIST_VIP: "VIP customers", CC_LIST_LAPSED: "Lapsed customers"}
)
CC_CUSTOM_FIELDS: tuple[CCFieldSeed, ...] = (
    CCFieldSeed("aaaaaaaa-0000-4000-8000-000000000001", "loyalty_tier", "Loyalty tier"),
    CCFieldSeed("aaaaaaaa-0000-4000-8000-000000000002", "favorite_store", "Favorite store"),
    CCFieldSeed("aaaaaaaa-0000-4000-8000-000000000003", "city", "City"),
)


@dataclass(frozen=True)
class Seed:
    """Everything a test or the demo needs to talk to a freshly reset sandbox."""

    ac_api_key: str = AC_API_KEY
    ac_lists: Mapping[int, str] = field(default_factory=lambda: AC_LISTS)
    ac_fields: tuple[ACFieldSeed, ...] = AC_FIELDS
    cc_client_id: str = CC_CLIENT_ID
    cc_client_secret: str = CC_CLIENT_SECRET
    cc_refresh_token: str = CC_REFRESH_TOKEN
    cc_refresh_token_scope: str = CC_REFRESH_TOKEN_SCOPE
    cc_lists: Mapping[str, str] = field(default_factory=lambda: CC_LISTS)
    cc_custom_fields: tuple[CCFieldSeed, ...] = CC_CUSTOM_FIELDS


SEED = Seed()
