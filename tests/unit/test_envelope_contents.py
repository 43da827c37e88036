"""What a credential envelope holds once grants live in the database (issue 13, item 11): the
token and its PIN only; envelopes sealed earlier, with `key_ids`, still open."""

from __future__ import annotations

import json

from proxy.identity.credentials import HsmCredentials


def test_new_envelopes_hold_no_key_ids() -> None:
    sealed = json.loads(HsmCredentials("label", "serial", "1234").to_bytes())
    assert sealed == {"token_label": "label", "token_serial": "serial", "pin": "1234"}


def test_envelopes_sealed_with_key_ids_still_open() -> None:
    old = json.dumps({"token_label": "label", "token_serial": "serial", "pin": "1234",
                      "key_ids": ["00ff"]}).encode()  # fmt: skip
    assert HsmCredentials.from_bytes(old) == HsmCredentials("label", "serial", "1234")
