"""Webhook signatures: what Standard Webhooks' own library verifies, with rotation."""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks

from darkroom.core.signatures import VerificationError, WebhookSigner

OLD = "whsec_" + base64.b64encode(b"old secret, 24 bytes....").decode()
NEW = "whsec_" + base64.b64encode(b"new secret, 24 bytes....").decode()
BODY = '{"id":"abc","stateName":"finished"}'


def test_the_signature_is_the_specifications():
    now = int(time.time())
    headers = WebhookSigner(NEW).headers("msg_abc", now, BODY)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    # the library itself, as a receiver uses it
    assert standardwebhooks.Webhook(NEW).verify(BODY, headers) == {
        "id": "abc",
        "stateName": "finished",
    }


def test_several_secrets_each_sign_so_either_verifies_during_a_rotation():
    headers = WebhookSigner(f"{NEW} {OLD}").headers("msg_abc", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (NEW, OLD):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
        WebhookSigner(secret).verify(BODY, headers)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": BODY + " "}, "No matching signature"),
        ({"webhook-id": "msg_other"}, "No matching signature"),
        ({"webhook-timestamp": str(int(time.time()) - 3600)}, "too old"),
        ({"webhook-signature": "v1,bm90IGl0"}, "No matching signature"),
        ({"webhook-signature": "garbage"}, "malformed"),
        ({"webhook-id": ""}, "Missing required headers"),
    ],
)
def test_anything_changed_fails_verification(change, message):
    signer = WebhookSigner(NEW)
    headers = signer.headers("msg_abc", int(time.time()), BODY)
    body = change.pop("body", BODY)
    with pytest.raises(VerificationError, match=message):
        signer.verify(body, {**headers, **change})
    with pytest.raises(VerificationError):
        WebhookSigner(OLD).verify(BODY, headers)


def test_a_secret_that_is_not_base64_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="DARKROOM_WEBHOOK_SECRET: secret 2"):
        WebhookSigner(f"{NEW} whsec_")
    assert not WebhookSigner("")
    assert WebhookSigner(NEW)
