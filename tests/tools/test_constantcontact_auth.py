"""The ``constantcontact_auth`` command, end to end against the sandbox over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from airflow_provider_ciexport.core.urls import CC_API_BASE_URL, CC_TOKEN_URL
from airflow_provider_ciexport.tools import constantcontact_auth as auth
from airflow_provider_ciexport.tools.constantcontact_auth import (
    AuthError,
    DeviceAuthorization,
    Endpoints,
    build_authorize_url,
    device_flow,
    format_connection_command,
    format_connection_env,
    main,
    pkce_pair,
    poll_device_token,
    run_pkce_flow,
    write_token_file,
)
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.server import SandboxServer

CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
SECRET_ENV = "CC_AUTH_TEST_CLIENT_SECRET"

pytestmark = pytest.mark.integration


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    # One second between device-flow polls keeps the device tests short.
    with SandboxServer(SandboxConfig(cc_device_interval_s=1), port=0) as server:
        yield server.url


@pytest.fixture(autouse=True)
def _fresh_sandbox(sandbox_url: str) -> None:
    SandboxClient(sandbox_url).reset()


@pytest.fixture
def endpoints(sandbox_url: str) -> Endpoints:
    return Endpoints.sandbox(sandbox_url)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a scratch directory (the default token file lands there) with the secret in the env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy between us and 127.0.0.1
    return session


def browser(url: str) -> None:
    """Do what the user's browser does: open the URL, follow the redirect to the local callback."""
    response = _session().get(url, timeout=10)
    assert response.history, "the authorize endpoint did not redirect"
    assert urlsplit(response.url).path == "/callback"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def refresh(sandbox_url: str, refresh_token: str) -> dict[str, Any]:
    """Exchange ``refresh_token`` at the sandbox's token endpoint like the hook does."""
    response = _session().post(
        f"{sandbox_url}/oauth2/default/v1/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _cli(sandbox_url: str, *extra: str) -> list[str]:
    return [
        "--client-id",
        CLIENT_ID,
        "--client-secret-env",
        SECRET_ENV,
        "--sandbox-url",
        sandbox_url,
        "--port",
        "0",
        "--timeout",
        "20",
        *extra,
    ]


def _printed_command(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.strip().startswith("airflow connections add"))
    return shlex.split(line)


def _printed_env(out: str) -> dict[str, Any]:
    line = next(line for line in out.splitlines() if line.strip().startswith("export AIRFLOW_CONN_"))
    name, _, value = shlex.split(line.strip().removeprefix("export "))[0].partition("=")
    assert name == "AIRFLOW_CONN_CONSTANTCONTACT_DEFAULT"
    parsed: dict[str, Any] = json.loads(value)
    return parsed


# -- small functions ------------------------------------------------------------------------------


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected
    assert pkce_pair()[0] != verifier


def test_build_authorize_url() -> None:
    url = build_authorize_url(
        "https://authz.example.com/v1/authorize", "cid", "http://localhost:8765/callback", "st", "ch"
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "authz.example.com", "/v1/authorize")
    assert "+" not in parts.query  # spaces as %20
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "client_id": "cid",
        "redirect_uri": "http://localhost:8765/callback",
        "response_type": "code",
        "scope": "contact_data offline_access",
        "state": "st",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


def test_default_endpoints_are_constant_contacts() -> None:
    ep = Endpoints()
    assert ep.authorize_url == "https://authz.constantcontact.com/oauth2/default/v1/authorize"
    assert ep.token_url == CC_TOKEN_URL
    assert ep.device_url == "https://authz.constantcontact.com/oauth2/default/v1/device/authorize"
    assert ep.api_base_url == CC_API_BASE_URL


def test_connection_command_with_defaults_hides_secrets() -> None:
    cmd = format_connection_command("constantcontact_default", "cid", "s3cret", "rt-123", Endpoints())
    args = shlex.split(cmd)
    assert args[:4] == ["airflow", "connections", "add", "constantcontact_default"]
    opts = dict(zip(args[4::2], args[5::2], strict=True))
    assert opts["--conn-type"] == "constantcontact"
    assert opts["--conn-login"] == "cid"
    assert opts["--conn-password"] == "<client-secret>"
    assert json.loads(opts["--conn-extra"]) == {"refresh_token": "<refresh-token>"}
    assert "s3cret" not in cmd and "rt-123" not in cmd


def test_connection_command_and_env_with_sandbox_urls_and_secrets() -> None:
    ep = Endpoints.sandbox("http://127.0.0.1:8025/")
    cmd = format_connection_command("cc_test", "cid", "s3cret", "rt-123", ep, show_secrets=True)
    opts = dict(zip(shlex.split(cmd)[4::2], shlex.split(cmd)[5::2], strict=True))
    assert opts["--conn-password"] == "s3cret"
    assert json.loads(opts["--conn-extra"]) == {
        "refresh_token": "rt-123",
        "api_base_url": "http://127.0.0.1:8025/v3",
        "oauth_url": "http://127.0.0.1:8025/oauth2/default/v1/token",
    }
    env = format_connection_env("cc_test", "cid", "s3cret", "rt-123", ep, show_secrets=True)
    name, _, value = shlex.split(env.removeprefix("export "))[0].partition("=")
    assert name == "AIRFLOW_CONN_CC_TEST"
    assert json.loads(value) == {
        "conn_type": "constantcontact",
        "login": "cid",
        "password": "s3cret",
        "extra": json.loads(opts["--conn-extra"]),
    }


def test_help_tells_to_register_the_redirect_uri(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "http://localhost:8765/callback" in out
    assert "Redirect URI" in out and "developer portal" in out


def test_the_command_does_not_wait_for_airflow_to_import() -> None:
    # Importing Airflow takes seconds; signing in to Constant Contact needs none of it.
    code = (
        "import sys\n"
        "from airflow_provider_ciexport.tools.constantcontact_auth import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- PKCE flow against the sandbox ----------------------------------------------------------------


def test_pkce_flow_end_to_end(sandbox_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "rt.txt"
    assert main(_cli(sandbox_url, "--token-file", str(token_file)), open_url=browser) == 0
    out, err = capsys.readouterr()

    # The refresh token is in a private file, and nowhere in the output.
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    refresh_token = token_file.read_text().strip()
    assert refresh_token
    for secret in (refresh_token, CLIENT_SECRET):
        assert secret not in out and secret not in err
    assert str(token_file) in out
    assert "Success" in out
    assert "/callback" in out and "developer portal" in out
    # As the docs say: no Variable to delete after re-authorizing.
    assert "variables delete" not in out and "constantcontact_refresh_token_<hash>" in out

    args = _printed_command(out)
    opts = dict(zip(args[4::2], args[5::2], strict=True))
    assert args[3] == "constantcontact_default"
    assert opts["--conn-login"] == CLIENT_ID
    assert opts["--conn-password"] == "<client-secret>"
    assert json.loads(opts["--conn-extra"]) == {
        "refresh_token": "<refresh-token>",
        "api_base_url": f"{sandbox_url}/v3",
        "oauth_url": f"{sandbox_url}/oauth2/default/v1/token",
    }
    assert _printed_env(out)["extra"]["refresh_token"] == "<refresh-token>"

    # The token really works.
    assert refresh_token in SandboxClient(sandbox_url).cc_refresh_tokens()
    answer = refresh(sandbox_url, refresh_token)
    assert answer["access_token"]
    assert "offline_access" in answer["scope"].split()


def test_pkce_flow_show_secrets_prints_a_working_command(
    sandbox_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_cli(sandbox_url, "--show-secrets", "--conn-id", "cc_prod"), open_url=browser) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / auth.DEFAULT_TOKEN_FILE).exists()
    args = _printed_command(out)
    opts = dict(zip(args[4::2], args[5::2], strict=True))
    assert args[3] == "cc_prod"
    assert opts["--conn-password"] == CLIENT_SECRET
    extra = json.loads(opts["--conn-extra"])
    assert "AIRFLOW_CONN_CC_PROD=" in out
    assert refresh(sandbox_url, extra["refresh_token"])["access_token"]


def test_default_token_file_is_private_even_if_it_existed(
    sandbox_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default = tmp_path / auth.DEFAULT_TOKEN_FILE
    default.write_text("old token\n")
    default.chmod(0o644)
    assert main(_cli(sandbox_url), open_url=browser) == 0
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    token = default.read_text().strip()
    assert token != "old token"
    assert token not in capsys.readouterr().out
    assert refresh(sandbox_url, token)["access_token"]


def test_a_forged_callback_is_ignored_and_the_real_redirect_still_completes(
    sandbox_url: str, endpoints: Endpoints
) -> None:
    def attacker_then_browser(url: str) -> None:
        # Before the user's browser comes back, someone sends the callback a request with another
        # state (and a code of their own): it is refused with a 400 page and changes nothing.
        callback = f"{parse_qs(urlsplit(url).query)['redirect_uri'][0]}?code=forged-code&state=forged-state"
        forged = _session().get(callback, timeout=10)
        assert forged.status_code == 400 and "ignored" in forged.text
        browser(url)

    result = run_pkce_flow(
        CLIENT_ID, CLIENT_SECRET, endpoints, port=0, open_url=attacker_then_browser, echo=lambda _: None
    )
    assert refresh(sandbox_url, result.refresh_token)["access_token"]


def test_a_redirect_to_localhost_is_received_whichever_address_it_resolves_to(
    sandbox_url: str, endpoints: Endpoints
) -> None:
    """The redirect URI says localhost; a browser may resolve it to ::1, where the server listens too."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")

    def ipv6_browser(url: str) -> None:
        answer = _session().get(url, timeout=10, allow_redirects=False)
        callback = answer.headers["Location"]
        assert urlsplit(callback).hostname == "localhost"
        assert _session().get(callback.replace("//localhost:", "//[::1]:", 1), timeout=10).status_code == 200

    result = run_pkce_flow(
        CLIENT_ID, CLIENT_SECRET, endpoints, port=0, open_url=ipv6_browser, echo=lambda _: None
    )
    assert refresh(sandbox_url, result.refresh_token)["access_token"]


def test_the_token_file_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "token.txt"
    link.symlink_to(victim)
    assert write_token_file(link, "the-token") == link
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "the-token\n"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token.txt", "victim.txt"]  # no temporary left


def test_pkce_flow_reports_access_denied(
    sandbox_url: str, endpoints: Endpoints, capsys: pytest.CaptureFixture[str]
) -> None:
    def denying_browser(url: str) -> None:
        # What Constant Contact does when the user clicks "Deny": redirect with error=access_denied.
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        callback = (
            query["redirect_uri"] + "?" + urlencode({"error": "access_denied", "state": query["state"]})
        )
        assert _session().get(callback, timeout=10).status_code == 400

    assert main(_cli(sandbox_url), open_url=denying_browser) == 1
    err = capsys.readouterr().err
    assert "access_denied" in err and "Allow" in err
    assert len(err.strip().splitlines()) == 1


def test_pkce_flow_invalid_client_exits_1(
    sandbox_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SECRET_ENV, "wrong-secret")
    assert main(_cli(sandbox_url), open_url=browser) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ")
    assert "invalid_client" in err and "client secret" in err
    assert len(err.strip().splitlines()) == 1
    assert "wrong-secret" not in err


def test_pkce_flow_without_offline_access_fails_clearly(endpoints: Endpoints) -> None:
    with pytest.raises(AuthError, match=r"no refresh token.*offline_access"):
        run_pkce_flow(
            CLIENT_ID,
            CLIENT_SECRET,
            endpoints,
            port=0,
            open_url=browser,
            echo=lambda _: None,
            scope="contact_data",
        )


def test_pkce_flow_port_in_use(endpoints: Endpoints) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AuthError, match=f"Cannot listen on 127.0.0.1:{port}.*--port"):
            run_pkce_flow(CLIENT_ID, CLIENT_SECRET, endpoints, port=port, open_url=browser)


def test_pkce_flow_times_out_without_redirect(endpoints: Endpoints) -> None:
    with pytest.raises(AuthError, match="No redirect arrived"):
        run_pkce_flow(
            CLIENT_ID,
            CLIENT_SECRET,
            endpoints,
            port=0,
            open_url=lambda _: None,
            echo=lambda _: None,
            wait_s=0.2,
        )


# -- device flow against the sandbox --------------------------------------------------------------


def test_device_flow_end_to_end(sandbox_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(sandbox_url, "--flow", "device")) == 0
    out, err = capsys.readouterr()
    token = (tmp_path / auth.DEFAULT_TOKEN_FILE).read_text().strip()
    assert stat.S_IMODE((tmp_path / auth.DEFAULT_TOKEN_FILE).stat().st_mode) == 0o600
    assert token not in out and token not in err and CLIENT_SECRET not in out
    assert "Open this URL" in out or "enter the code" in out
    assert refresh(sandbox_url, token)["access_token"]


def test_device_flow_without_offline_access_fails_clearly(endpoints: Endpoints) -> None:
    with pytest.raises(AuthError, match=r"no refresh token.*offline_access"):
        device_flow(CLIENT_ID, endpoints, echo=lambda _: None, scope="contact_data", sleep=lambda _: None)


def test_device_flow_unknown_client_exits_1(sandbox_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(sandbox_url, "--flow", "device")
    args[1] = "no-such-client"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "invalid_client" in err and "--client-id" in err


class _FakeTokenEndpoint:
    """Answers device-flow polls from a script (for the answers the sandbox does not produce)."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.polls: list[dict[str, str]] = []

    def post(self, url: str, data: dict[str, str], **kwargs: Any) -> requests.Response:
        self.polls.append(data)
        status, body = self.answers.pop(0)
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        return response


_DEVICE = DeviceAuthorization("dev-code", "ABCD-EFGH", "https://x/activate", None, 600, 5)


def test_device_polling_gives_up_after_the_timeout() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    fake = _FakeTokenEndpoint([(400, {"error": "authorization_pending"})] * 200)
    with pytest.raises(AuthError, match=r"within --timeout 30 s"):
        poll_device_token(
            "https://x/token",
            CLIENT_ID,
            _DEVICE,  # the code lives 600 s; --timeout says 30
            session=fake,  # type: ignore[arg-type]
            sleep=sleep,
            clock=lambda: now[0],
            wait_s=30,
        )
    assert 25 <= now[0] <= 40 and len(fake.polls) == 6


def test_the_device_flow_of_the_command_honours_timeout(
    sandbox_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nobody approves; the sandbox's device code lives 600 s.
    assert main(_cli(sandbox_url, "--flow", "device", "--timeout", "1.5")) == 1
    out, err = capsys.readouterr()
    assert "Waiting up to 1.5 s" in out and "--timeout 1.5 s" in err


def test_device_polling_backs_off_on_slow_down() -> None:
    fake = _FakeTokenEndpoint(
        [
            (400, {"error": "authorization_pending"}),
            (400, {"error": "slow_down"}),
            (
                200,
                {
                    "access_token": "AT-secret",
                    "refresh_token": "RT-secret",
                    "scope": "contact_data offline_access",
                },
            ),
        ]
    )
    waits: list[float] = []
    result = poll_device_token(
        "https://x/token",
        "cid",
        _DEVICE,
        session=fake,  # type: ignore[arg-type]
        sleep=waits.append,
    )
    assert result.refresh_token == "RT-secret"
    assert "AT-secret" not in repr(result) and "RT-secret" not in repr(result)
    assert waits == [5, 5, 10]
    assert fake.polls[0] == {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": "dev-code",
        "client_id": "cid",
    }


@pytest.mark.parametrize(
    ("error", "message"),
    [("expired_token", "expired"), ("access_denied", "declined"), ("invalid_grant", "invalid_grant")],
)
def test_device_polling_stops_on_final_errors(error: str, message: str) -> None:
    fake = _FakeTokenEndpoint([(400, {"error": "authorization_pending"}), (400, {"error": error})])
    with pytest.raises(AuthError, match=message):
        poll_device_token("https://x/token", "cid", _DEVICE, session=fake, sleep=lambda _: None)  # type: ignore[arg-type]


# -- configuration errors -------------------------------------------------------------------------


def test_plain_http_to_a_remote_host_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["--client-id", CLIENT_ID, "--client-secret-env", SECRET_ENV, "--token-url", "http://example.com/t"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "https://" in err and "token URL" in err


@pytest.mark.parametrize(
    ("option", "url"),
    [
        ("--token-url", "http://other-host:8000\\@127.0.0.1/token"),
        ("--authorize-url", "http://me@127.0.0.1:8025/authorize"),
        ("--device-url", "http://127.0.0.1:8025/device\\"),
        ("--api-base-url", "http://127.0.0.1:8025/v3\x7f"),
        ("--sandbox-url", "http://other-host:8000\\@127.0.0.1"),
    ],
)
def test_an_endpoint_read_two_ways_is_refused_naming_the_option(
    option: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--client-id", CLIENT_ID, "--client-secret-env", SECRET_ENV, option, url]) == 1
    err = capsys.readouterr().err
    assert "Nothing was sent" in err
    assert option in err


def test_missing_secret_env_var(sandbox_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(sandbox_url, "--client-secret-env", "CC_AUTH_TEST_UNSET_VAR")) == 1
    assert "CC_AUTH_TEST_UNSET_VAR" in capsys.readouterr().err


def test_secret_is_prompted_without_env_var(
    sandbox_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return CLIENT_SECRET

    monkeypatch.setattr(auth.getpass, "getpass", fake_getpass)
    args = [a for a in _cli(sandbox_url) if a not in ("--client-secret-env", SECRET_ENV)]
    assert main(args, open_url=browser) == 0
    assert prompts and "secret" in prompts[0].lower()
    assert os.path.exists(tmp_path / auth.DEFAULT_TOKEN_FILE)
    assert CLIENT_SECRET not in capsys.readouterr().out


def test_browser_is_opened_unless_no_browser(
    sandbox_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    opened: list[str] = []

    def fake_open(url: str, *args: Any, **kwargs: Any) -> bool:
        opened.append(url)
        browser(url)
        return True

    monkeypatch.setattr(auth.webbrowser, "open", fake_open)
    assert main(_cli(sandbox_url)) == 0
    assert len(opened) == 1 and opened[0] in capsys.readouterr().out

    opened.clear()
    args = [*_cli(sandbox_url, "--no-browser"), "--timeout", "0.2"]
    assert main(args) == 1
    assert opened == []
    assert "No redirect arrived" in capsys.readouterr().err


def test_an_idle_browser_connection_does_not_block_the_redirect(endpoints: Endpoints) -> None:
    def preconnecting_browser(url: str) -> None:
        # Browsers open speculative connections that send nothing; the redirect must still get through.
        port = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0]).port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port)):
            browser(url)

    result = run_pkce_flow(
        CLIENT_ID, CLIENT_SECRET, endpoints, port=0, open_url=preconnecting_browser, echo=lambda _: None
    )
    assert result.refresh_token and "offline_access" in result.scope.split()
