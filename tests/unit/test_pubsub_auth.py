"""SPEC §8: Gmail pushes are authenticated by the Pub/Sub OIDC token
(adapters/deliveries/pubsub_auth.py).

The certificate endpoint is an httpx.MockTransport that counts its requests; the tokens are
signed with keys generated here (tests/google_tokens.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from google_tokens import ACCOUNT, AUDIENCE, SigningKey, certs

from adapters.deliveries.pubsub_auth import (
    GoogleCerts,
    PushRefused,
    PushVerifier,
    RouteDisabled,
    max_age,
)

KEY = SigningKey("key-1")
OTHER = SigningKey("key-2")  # not published: a forger's key


class CertsEndpoint:
    """Google's certificate document, served by a MockTransport; counts the fetches."""

    def __init__(self, *keys: SigningKey, cache_control: str = "public, max-age=20000") -> None:
        self.document, self.cache_control, self.requests = certs(*keys), cache_control, 0
        self.fail = False

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            if self.fail:
                return httpx.Response(500)
            return httpx.Response(200, json=self.document,
                                  headers={"Cache-Control": self.cache_control})

        return httpx.MockTransport(handle)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(endpoint: CertsEndpoint, clock: Clock | None = None,
             account: str | None = ACCOUNT) -> PushVerifier:
    store = GoogleCerts("https://certs.test/oauth2/v1/certs", transport=endpoint.transport(),
                        clock=clock or time.monotonic)
    return PushVerifier(AUDIENCE, store, service_account=account)


def refused(check: PushVerifier | RouteDisabled, authorization: str | None) -> int:
    with pytest.raises(PushRefused) as caught:
        asyncio.run(check.check(authorization))
    return caught.value.status


def test_section8_a_token_signed_by_google_for_our_audience_and_account_is_accepted() -> None:
    endpoint = CertsEndpoint(KEY)
    asyncio.run(verifier(endpoint).check(f"Bearer {KEY.token()}"))
    assert endpoint.requests == 1


@pytest.mark.parametrize(("authorization", "status"), [
    (None, 401),
    ("", 401),
    ("Basic dXNlcjpwYXNz", 401),
    ("Bearer ", 401),
    ("Bearer not-a-jwt", 401),
    ("Bearer " + "a" * 9000, 401),
    ("Bearer " + OTHER.token(), 401),  # signed with a key Google did not publish
    ("Bearer " + KEY.token()[:-4] + "AAAA", 401),  # signature altered
    ("Bearer " + KEY.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), 401),
    ("Bearer " + KEY.token(iat=int(time.time()) + 3600), 401),  # issued in the future
    ("Bearer " + KEY.token(exp=None), 401),
    ("Bearer " + KEY.token(iss="https://evil.test"), 401),
    ("Bearer " + KEY.token(iat="yesterday"), 401),
    ("Bearer " + KEY.token(aud="https://other.test/push"), 403),
    ("Bearer " + KEY.token(email="someone@else.iam.gserviceaccount.com"), 403),
    ("Bearer " + KEY.token(email_verified=False), 403),
    ("Bearer " + KEY.token(email=None), 403),
])
def test_section8_pushes_without_a_valid_token_are_refused(authorization: str | None,
                                                           status: int) -> None:
    assert refused(verifier(CertsEndpoint(KEY)), authorization) == status


def test_section8_without_a_configured_account_any_google_account_for_our_audience_passes() -> None:
    check = verifier(CertsEndpoint(KEY), account=None)
    asyncio.run(check.check(f"Bearer {KEY.token(email='another@p.iam.gserviceaccount.com')}"))
    assert refused(check, f"Bearer {KEY.token(aud='https://other.test')}") == 403


def test_section8_certificates_are_fetched_once_while_fresh_and_again_when_expired() -> None:
    endpoint, clock = CertsEndpoint(KEY, cache_control="public, max-age=600"), Clock()
    check = verifier(endpoint, clock)
    for _ in range(50):
        asyncio.run(check.check(f"Bearer {KEY.token()}"))
    assert endpoint.requests == 1
    clock.now += 599
    asyncio.run(check.check(f"Bearer {KEY.token()}"))
    assert endpoint.requests == 1
    clock.now += 2
    asyncio.run(check.check(f"Bearer {KEY.token()}"))
    assert endpoint.requests == 2


def test_section8_an_unknown_key_id_refetches_at_most_once_per_interval() -> None:
    endpoint, clock = CertsEndpoint(KEY), Clock()
    check = verifier(endpoint, clock)
    asyncio.run(check.check(f"Bearer {KEY.token()}"))
    for _ in range(20):  # forged key ids must not make us hammer Google
        assert refused(check, f"Bearer {OTHER.token()}") == 401
    assert endpoint.requests == 1  # fetched under 30 s ago
    clock.now += 31
    for _ in range(20):
        assert refused(check, f"Bearer {OTHER.token()}") == 401
    assert endpoint.requests == 2  # one early refetch for the 20
    endpoint.document = certs(KEY, OTHER)  # Google rotated its keys
    clock.now += 31
    asyncio.run(check.check(f"Bearer {OTHER.token()}"))
    assert endpoint.requests == 3


def test_section8_unreachable_certificates_answer_503_so_the_push_is_retried() -> None:
    endpoint, clock = CertsEndpoint(KEY, cache_control="max-age=60"), Clock()
    endpoint.fail = True
    check = verifier(endpoint, clock)
    assert refused(check, f"Bearer {KEY.token()}") == 503
    endpoint.fail = False
    clock.now += 60
    asyncio.run(check.check(f"Bearer {KEY.token()}"))
    assert endpoint.requests == 2


def test_section8_a_disabled_route_refuses_every_push_with_503() -> None:
    assert refused(RouteDisabled("no audience"), f"Bearer {KEY.token()}") == 503


@pytest.mark.parametrize(("header", "seconds"), [
    ("public, max-age=20683, must-revalidate, no-transform", 20683.0),
    ("max-age=1", 60.0), ("max-age=99999999", 86400.0), ("no-cache", 3600.0), (None, 3600.0),
    ("max-age=" + "9" * 5000, 3600.0), ("max-age=²", 3600.0),
])
def test_section8_certificates_are_kept_for_their_max_age_within_bounds(
        header: str | None, seconds: float) -> None:
    assert max_age(header) == seconds
