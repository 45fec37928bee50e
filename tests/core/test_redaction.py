"""What is shown of a vendor's error text: its codes and keys, never a value the request carried."""

from __future__ import annotations

import json

import requests

from airflow_provider_ciexport.core.redaction import request_values, scrub, vendor_error_text

CARRIED = ["ann@example.com", "Ann", "Lee-Smith", "+1 415 555 0100", "San Francisco", "Gold"]


def test_scrub_removes_addresses_numbers_and_what_the_request_carried() -> None:
    text = (
        "Contact ANN@example.com (Ann, +1 415 555 0100) is invalid; city 'San  Francisco', "
        "tier Gold, born 1985-04-12, other Bob.Roe@example.org; Lee-Smith is too long"
    )
    assert scrub(text, CARRIED) == (
        "Contact <email> (<value>, <number>) is invalid; city '<value>', tier <value>, born <number>, "
        "other <email>; <value> is too long"
    )


def test_scrub_keeps_what_is_about_the_request_not_its_data() -> None:
    text = "No Result found for _List with id 7. Up to 100 imports may be requested per minute."
    assert scrub(text, CARRIED) == text


def test_scrub_finds_one_word_of_a_value_of_several() -> None:
    assert scrub("The city Francisco is unknown", CARRIED) == "The city <value> is unknown"


def test_scrub_shortens_and_keeps_one_line() -> None:
    shown = scrub("line one\nline two " + "word " * 200)
    assert "\n" not in shown and 290 <= len(shown) <= 300 and shown.endswith("word")


def test_a_value_cut_by_the_shortening_shows_no_part_of_itself() -> None:
    # A carried value that straddles where the text is cut: what is left of it is no longer the value
    # (so it cannot be recognised) and must not be shown either.
    for filler in range(560, 620):
        text = "x" * filler + " Zebulon-Marchetti is on the list"
        assert "Zebulon" not in scrub(text, ["Zebulon-Marchetti"]), filler
    # Values replaced by shorter markers bring the cut within what is shown: it still is not shown.
    value = "Lee-Smith-Lee-Smith-Lee-Smith"
    for filler in range(10, 35):
        text = "x" * filler + " " + f"{value} " * 19 + "Zebulon-Marchetti is on the list"
        shown = scrub(text, [value, "Zebulon-Marchetti"])
        assert "<value>" in shown and "Zeb" not in shown and "Lee" not in shown, filler


def _prepared(**kwargs: object) -> requests.PreparedRequest:
    return requests.Request(**kwargs).prepare()  # type: ignore[arg-type]


def test_request_values_read_query_credentials_and_json_body() -> None:
    request = _prepared(
        method="POST",
        url="https://x.api-us1.com/api/3/contacts?email=ann%40example.com",
        headers={"Api-Token": "secret-key-123", "Authorization": "Bearer tok-456"},
        data=json.dumps({"contacts": [{"email": "bob@example.com", "phone": 4155550100, "x": True}]}),
    )
    values = set(request_values(request))
    assert {"ann@example.com", "secret-key-123", "tok-456", "bob@example.com", "4155550100"} <= values
    assert "True" not in values and "contacts" not in values  # keys and flags are not data


def test_a_vendor_echoing_the_credential_shows_no_credential() -> None:
    request = _prepared(
        method="GET", url="https://x/api/3/lists", headers={"Api-Token": "k3y-0f-the-account"}
    )
    text = vendor_error_text({"message": "Key k3y-0f-the-account is not valid"}, request_values(request))
    assert "k3y" not in text and text == "Key <value> is not valid"


def test_vendor_error_text_keeps_codes_keys_and_positions() -> None:
    cc = [{"error_key": "contacts.api.validation.error", "error_message": "Contact ann@example.com is bad"}]
    assert vendor_error_text(cc) == "contacts.api.validation.error; Contact <email> is bad"
    ac = {
        "errors": [
            {
                "title": "Contact Ann is invalid",
                "detail": "",
                "code": "field_invalid",
                "source": {"pointer": "/data/attributes/email"},
            }
        ]
    }
    assert (
        vendor_error_text(ac, CARRIED) == "field_invalid; /data/attributes/email; Contact <value> is invalid"
    )
    bulk = {
        "success": 0,
        "message": "JSON payload did not pass validation.",
        "failureReasons": [{"contact": 230, "failureReason": "Field' email' incorrect format: Ann"}],
    }
    assert vendor_error_text(bulk, CARRIED) == (
        "JSON payload did not pass validation.; contact 230: Field' email' incorrect format: <value>"
    )


def test_a_key_that_is_a_value_is_not_shown_as_a_key() -> None:
    assert vendor_error_text([{"error_key": "Gold"}], CARRIED) == "no details"
    assert vendor_error_text(None) == "no details"


def test_the_values_of_a_large_import_are_read_once_for_every_text() -> None:
    # 40,000 contacts, as a Constant Contact import may carry; the vendor quotes two of them.
    body = {
        "import_data": [{"email": f"p{i}@example.com", "first_name": f"Name{i:05d}"} for i in range(40_000)]
    }
    request = _prepared(
        method="POST", url="https://api.cc.email/v3/activities/contacts_json_import", json=body
    )
    once = iter(request_values(request))  # a second pass would find nothing
    payload = [
        {"error_key": "contacts.api.validation.error", "error_message": "Contact Name00017 is invalid"},
        {"error_key": "contacts.api.validation.error", "error_message": "Contact Name39999 is invalid"},
    ]
    assert vendor_error_text(payload, once) == "contacts.api.validation.error; Contact <value> is invalid"


def test_a_token_endpoint_echoing_the_grant_shows_neither_the_token_nor_the_client() -> None:
    from airflow_provider_ciexport.hooks.constantcontact_oauth import TokenError

    request = _prepared(
        method="POST",
        url="https://authz.example.com/oauth2/default/v1/token",
        data={"grant_type": "refresh_token", "refresh_token": "rt-SECRET-42"},
        auth=("client-id-7", "client-secret-9"),
    )
    response = requests.Response()
    response.status_code = 400
    response._content = json.dumps(
        {
            "error": "invalid_grant",
            "error_description": "Refresh token rt-SECRET-42 of client client-id-7 (owner ann@example.com) expired",
        }
    ).encode()
    response.request = request
    refusal = TokenError.from_response(response)
    assert refusal.error == "invalid_grant"
    assert refusal.description == "Refresh token <value> of client <value> (owner <email>) expired"
    odd = requests.Response()
    odd.status_code, odd._content, odd.request = 400, b'{"error": "not a code: ann@example.com"}', request
    assert TokenError.from_response(odd).error is None
