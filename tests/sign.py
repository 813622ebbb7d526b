#!/usr/bin/env python3
"""Signs a webhook body (read from stdin) the way a sender does, with the
sender's official library, and prints the headers as JSON on stdout.

    python3 tests/sign.py stripe|slack|standard-webhooks SECRET < body

Exit code 3 with a message on stderr when the library is not installed
(`.ci/run` installs the pinned versions: stripe, slack_sdk, standardwebhooks).
"""
import datetime
import json
import sys
import time


def main():
    kind, secret = sys.argv[1], sys.argv[2]
    body = sys.stdin.buffer.read()
    now = int(time.time())
    try:
        if kind == "stripe":
            import stripe

            text = body.decode("utf-8")
            sig = stripe.WebhookSignature._compute_signature(f"{now}.{text}", secret)
            header = f"t={now},v1={sig}"
            # The library's own verifier must accept what it signed.
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance=300)
            headers = {"Stripe-Signature": header, "Content-Type": "application/json"}
        elif kind == "slack":
            from slack_sdk.signature import SignatureVerifier

            v = SignatureVerifier(secret)
            sig = v.generate_signature(timestamp=str(now), body=body)
            assert v.is_valid(body=body, timestamp=str(now), signature=sig)
            headers = {
                "X-Slack-Signature": sig,
                "X-Slack-Request-Timestamp": str(now),
                "Content-Type": "application/x-www-form-urlencoded",
            }
        elif kind == "standard-webhooks":
            from standardwebhooks.webhooks import Webhook

            wh = Webhook(secret)
            msg_id = "msg_" + str(now) + "_" + str(len(body))
            ts = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc)
            sig = wh.sign(msg_id, ts, body.decode("utf-8"))
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sig,
                "Content-Type": "application/json",
            }
            wh.verify(body, headers)
        else:
            print(f"unknown kind {kind}", file=sys.stderr)
            sys.exit(2)
    except ImportError as e:
        print(f"official library missing: {e}", file=sys.stderr)
        sys.exit(3)
    print(json.dumps(headers))


main()
