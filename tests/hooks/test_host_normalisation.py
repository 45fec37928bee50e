"""Whatever users paste as the ActiveCampaign API URL means one base URL, or a clear error."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from urllib3.util import parse_url

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.hooks.activecampaign import normalize_api_url
from airflow_provider_ciexport.hooks.base import check_base_url


@pytest.mark.parametrize(
    "pasted",
    [
        "https://youracct.api-us1.com/api/3/",
        "https://youracct.api-us1.com/api/3",
        "https://youracct.api-us1.com/",
        "https://youracct.api-us1.com",
        "youracct.api-us1.com/",
        "youracct.api-us1.com",
        "youracct.api-us1.com/api/3/",
        "  youracct.api-us1.com  ",
        "HTTPS://YourAcct.api-us1.com",
    ],
)
def test_same_host_whatever_the_form(pasted: str) -> None:
    assert normalize_api_url(pasted).lower() == "https://youracct.api-us1.com/api/3"


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("http://127.0.0.1:8025", "http://127.0.0.1:8025/api/3"),
        ("http://localhost:8025/api/3/", "http://localhost:8025/api/3"),
        ("127.0.0.1:8025", "https://127.0.0.1:8025/api/3"),
        ("https://youracct.api-eu1.com:443", "https://youracct.api-eu1.com:443/api/3"),
    ],
)
def test_loopback_http_is_honoured_and_ports_kept(pasted: str, expected: str) -> None:
    assert normalize_api_url(pasted) == expected


@pytest.mark.parametrize(
    ("pasted", "complaint"),
    [
        ("", "no API URL"),
        (None, "no API URL"),
        ("   ", "no API URL"),
        ("youracct api-us1.com", "spaces"),
        ("https://youracct.api-us1.com\\@127.0.0.1", "backslash"),
        ("https://youracct.api-us1.com\\", "backslash"),
        ("https://me:pw@youracct.api-us1.com", "user name or password"),
        ("https://youracct.api-us1.com@127.0.0.1", "user name or password"),
        ("https://youracct.api-us1.com\x00", "control character"),
        ("https://youracct.api-us1.com/\u200b", "control character"),
        ("https://youracct.api-us1.com/admin/", "somewhere other than the API"),
        ("https://youracct.api-us1.com/api/1", "somewhere other than the API"),
        ("http://youracct.api-us1.com", "plain http://"),
        ("ftp://youracct.api-us1.com", "scheme"),
        ("https://", "no valid host name"),
        ("https://under_score.example.com", "no valid host name"),
    ],
)
def test_anything_else_is_a_clear_error(pasted: str | None, complaint: str) -> None:
    with pytest.raises(ExportConfigurationError, match=complaint) as err:
        normalize_api_url(pasted, "my_ac")
    assert "my_ac" in str(err.value)
    assert "Settings > Developer" in str(err.value)


def test_port_field_is_used_when_the_url_has_none() -> None:
    assert normalize_api_url("http://127.0.0.1", port=8025) == "http://127.0.0.1:8025/api/3"


@pytest.mark.parametrize("url", ["http://api.cc.email/v3", "ftp://x/v3", "not a url", "https:///v3"])
def test_constant_contact_urls_must_be_https_or_loopback(url: str) -> None:
    with pytest.raises(ExportConfigurationError, match="api_base_url"):
        check_base_url(url, "api_base_url", "cc")


def test_constant_contact_loopback_http_allowed() -> None:
    assert check_base_url("http://127.0.0.1:9/v3/", "api_base_url", "cc") == "http://127.0.0.1:9/v3"


#: Each is read as loopback by ``urlsplit`` while urllib3, which connects, reads another host (or
#: cannot tell): the check refuses them instead of guessing.
AMBIGUOUS = [
    "http://other-host:8000\\@127.0.0.1/token",
    "http://127.0.0.1\\@other-host/token",
    "http://user@127.0.0.1:8025/token",
    "http://other-host:8000@127.0.0.1/token",
    "http://127.0.0.1:8025/tok\ten",
    "http://127.0.0.1:8025/token\r\nHost: other-host",
]


def test_the_ambiguous_address_of_the_issue_names_another_host_for_the_client() -> None:
    url = AMBIGUOUS[0]
    assert urlsplit(url).hostname == "127.0.0.1" and parse_url(url).host == "other-host"


@pytest.mark.parametrize("what", ["api_base_url", "oauth_url"])
@pytest.mark.parametrize("url", AMBIGUOUS)
def test_an_address_read_two_ways_is_refused_naming_the_field(url: str, what: str) -> None:
    with pytest.raises(ExportConfigurationError, match=f"The {what} of connection 'cc' contains") as err:
        check_base_url(url, what, "cc")
    assert "Nothing was sent" in str(err.value)


def test_a_connection_to_a_loopback_sandbox_says_so_once(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # A production DAG pointed at the sandbox by mistake would otherwise succeed with no word.
    from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
    from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
    from airflow_provider_ciexport.tools.sandbox.connections import ac_connection, cc_connection
    from tests.support import set_connection

    hooks = [
        ActiveCampaignHook(set_connection(monkeypatch, "ac_local", **ac_connection("http://127.0.0.1:8025"))),
        ConstantContactHook(
            set_connection(monkeypatch, "cc_local", **cc_connection("http://localhost:8025"))
        ),
    ]
    capfd.readouterr()
    for hook in hooks:
        assert hook.api_base_url == hook.api_base_url
    said = [line for line in "".join(capfd.readouterr()).splitlines() if "local sandbox" in line]
    assert len(said) == 2
    assert "Connection 'ac_local' points at 127.0.0.1:8025" in said[0] and "not ActiveCampaign" in said[0]
    assert "localhost:8025" in said[1] and "not Constant Contact" in said[1]
    real = set_connection(
        monkeypatch, "ac_real", conn_type="activecampaign", host="https://acct.api-us1.com", password="k"
    )
    ActiveCampaignHook(real).api_base_url  # noqa: B018
    assert "local sandbox" not in "".join(capfd.readouterr())
