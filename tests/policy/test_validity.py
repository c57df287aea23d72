"""Tests for the validity check and the token lifetime's notAfter cap."""

from __future__ import annotations

import datetime

import pytest

from shared.client_cert import CLOCK_SKEW, ClientCertificate, check_validity
from shared.errors import InvalidClientError
from tests.policy.conftest import Configure, Mint, TokenCall, lb_headers_for, utc_now

NOT_BEFORE = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2030, 2, 1, 12, 0, 0, tzinfo=datetime.UTC)
CERT = ClientCertificate(
    present=True, chain_verified=True, not_before=NOT_BEFORE, not_after=NOT_AFTER
)
SECOND = datetime.timedelta(seconds=1)
MICROSECOND = datetime.timedelta(microseconds=1)


def test_skew_is_sixty_seconds() -> None:
    assert datetime.timedelta(seconds=60) == CLOCK_SKEW


@pytest.mark.parametrize(
    "now",
    [
        pytest.param(NOT_BEFORE - CLOCK_SKEW, id="skew-before-not-before"),
        pytest.param(NOT_BEFORE, id="at-not-before"),
        pytest.param(NOT_AFTER, id="at-not-after"),
        pytest.param(NOT_AFTER + CLOCK_SKEW, id="skew-after-not-after"),
    ],
)
def test_within_skew_accepted(now: datetime.datetime) -> None:
    check_validity(CERT, now)


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        pytest.param(
            NOT_BEFORE - CLOCK_SKEW - MICROSECOND,
            "certificate_not_yet_valid",
            id="just-past-skew-before",
        ),
        pytest.param(
            NOT_BEFORE - CLOCK_SKEW - SECOND,
            "certificate_not_yet_valid",
            id="61s-before",
        ),
        pytest.param(
            NOT_AFTER + CLOCK_SKEW + MICROSECOND,
            "certificate_expired",
            id="just-past-skew-after",
        ),
        pytest.param(
            NOT_AFTER + CLOCK_SKEW + SECOND, "certificate_expired", id="61s-after"
        ),
    ],
)
def test_outside_skew_rejected(now: datetime.datetime, reason: str) -> None:
    with pytest.raises(InvalidClientError) as caught:
        check_validity(CERT, now)
    assert caught.value.reason == reason
    assert caught.value.status_code == 401


def test_unknown_dates_not_checked() -> None:
    cert = ClientCertificate(present=True, chain_verified=True)
    check_validity(cert, NOT_AFTER + datetime.timedelta(days=365))


def test_dates_from_other_offsets_compared() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    cert = ClientCertificate(
        present=True, chain_verified=True, not_after=NOT_AFTER.astimezone(plus_two)
    )
    check_validity(cert, NOT_AFTER + CLOCK_SKEW)
    with pytest.raises(InvalidClientError):
        check_validity(cert, NOT_AFTER + CLOCK_SKEW + SECOND)


# --- Through the token function ----------------------------------------------


def issue_for(
    call_token: Configure, mint: Mint, **dates: datetime.datetime
) -> TokenCall:
    certificate = mint("dated", **dates).certificate
    return call_token()(lb_headers_for(certificate))


def test_validity_on_by_default(call_token: Configure, mint: Mint) -> None:
    now = utc_now()
    call = issue_for(
        call_token,
        mint,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    assert call.status == 401
    assert call.body["error"] == "invalid_client"
    assert call.labels["reason"] == "certificate_expired"


def test_not_yet_valid_rejected(call_token: Configure, mint: Mint) -> None:
    now = utc_now()
    call = issue_for(
        call_token,
        mint,
        not_before=now + datetime.timedelta(hours=1),
        not_after=now + datetime.timedelta(days=30),
    )
    assert call.status == 401
    assert call.labels["reason"] == "certificate_not_yet_valid"


def test_fresh_certificate_within_skew_accepted(
    call_token: Configure, mint: Mint
) -> None:
    # Issued by a CA whose clock runs 30 s ahead of this service's.
    now = utc_now()
    call = issue_for(
        call_token,
        mint,
        not_before=now + datetime.timedelta(seconds=30),
        not_after=now + datetime.timedelta(days=30),
    )
    assert call.status == 200


def test_exp_capped_at_not_after(call_token: Configure, mint: Mint) -> None:
    not_after = (utc_now() + datetime.timedelta(seconds=90)).replace(microsecond=0)
    call = issue_for(call_token, mint, not_after=not_after)
    assert call.status == 200
    assert call.claims["exp"] == int(not_after.timestamp())
    assert call.body["expires_in"] == call.claims["exp"] - call.claims["iat"]
    assert call.body["expires_in"] <= 90


def test_expired_within_skew_no_token(call_token: Configure, mint: Mint) -> None:
    # Within the skew the validity check passes, but no token could expire
    # by the certificate's notAfter, so none is issued.
    now = utc_now()
    call = issue_for(
        call_token,
        mint,
        not_before=now - datetime.timedelta(minutes=3),
        not_after=now - datetime.timedelta(seconds=30),
    )
    assert call.status == 401
    assert call.labels["reason"] == "certificate_expired"
    assert len(call.entries) == 1
