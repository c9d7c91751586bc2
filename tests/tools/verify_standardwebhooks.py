#!/usr/bin/env python3
"""Verifies carebill's outbound webhooks with the reference `standardwebhooks` library (PyPI).

Reads JSON on stdin: {"secret": "whsec_...", "messages": [{"headers": {...}, "body": "..."}]}.
Each message must verify; a copy with one byte of its body changed, and one signed with a
different secret, must not (so the check can fail). Prints "verified N" and exits 0, or names
the first message that does not verify and exits 1.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

OTHER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def main() -> int:
    request = json.load(sys.stdin)
    hook = Webhook(request["secret"])
    other = Webhook(OTHER_SECRET)
    messages = request["messages"]
    if not messages:
        print("no messages to verify")
        return 1
    for i, message in enumerate(messages):
        headers, body = message["headers"], message["body"]
        try:
            payload = hook.verify(body, headers)
        except WebhookVerificationError as e:
            print(f"message {i} ({headers.get('webhook-id')}) does not verify: {e}")
            return 1
        if payload != json.loads(body):
            print(f"message {i}: verified payload differs from the body")
            return 1
        tampered = body.replace('"amount"', '"amounT"', 1) if '"amount"' in body else body + " "
        for name, check, text in (("tampered body", hook, tampered), ("other secret", other, body)):
            try:
                check.verify(text, headers)
            except WebhookVerificationError:
                continue
            print(f"message {i}: a {name} verified")
            return 1
    print(f"verified {len(messages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
