#!/usr/bin/env python3
"""Mint an HS256 development token for the local stack (stdlib only).

    scripts/token.py [TENANT ...] [--sub SUB] [--ttl SECONDS] [--admin]

Claims: {"iss": ISSUER, "aud": AUDIENCE, "sub": SUB, "iat": now, "exp": now + TTL,
"tenants": [TENANT, ...]} (plus "admin": true with --admin, for the /v1/admin routes), signed
with the secret in AUTH_JWT_SECRET, or the local stack's fixed development secret when it is
unset (the same default as scripts/stack.sh). ISSUER is AUTH_JWT_ISSUER (default nats-es-dev)
and AUDIENCE the first of AUTH_JWT_AUDIENCE (default nats-es): what the stack requires. The services need the secret to be at least 16 bytes.
Development only: never use the default secret anywhere reachable.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time

# Keep in step with DEFAULT_JWT_SECRET, DEFAULT_JWT_ISSUER and DEFAULT_JWT_AUDIENCE in
# scripts/stack.sh (and DEV_ISSUER, DEV_AUDIENCE in platform/src/auth/mod.rs).
DEFAULT_SECRET = "local-dev-secret-change-me-0123456789"
DEFAULT_ISSUER = "nats-es-dev"
DEFAULT_AUDIENCE = "nats-es"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(secret: bytes, sub: str, tenants: list, ttl: int, admin: bool = False,
         issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": sub, "iat": now, "exp": now + ttl,
              "tenants": tenants}
    if admin:
        claims["admin"] = True
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode("utf-8"))
        for part in (header, claims)
    )
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def main() -> int:
    parser = argparse.ArgumentParser(description="Mint an HS256 development token.")
    parser.add_argument("tenants", nargs="*", default=["acme"], metavar="TENANT",
                        help="tenants the token grants (default: acme)")
    parser.add_argument("--sub", default="dev", help="subject (default: dev)")
    parser.add_argument("--ttl", type=int, default=86400,
                        help="lifetime in seconds (default: 86400)")
    parser.add_argument("--admin", action="store_true",
                        help="also grant the admin routes (/v1/admin/...)")
    args = parser.parse_args()
    secret = os.environ.get("AUTH_JWT_SECRET") or DEFAULT_SECRET
    # the services trim the secret before use; do the same so both sides sign alike
    secret_bytes = secret.strip().encode("utf-8")
    if len(secret_bytes) < 16:
        print("token.py: AUTH_JWT_SECRET must be at least 16 bytes", file=sys.stderr)
        return 1
    issuer = os.environ.get("AUTH_JWT_ISSUER") or DEFAULT_ISSUER
    audience = (os.environ.get("AUTH_JWT_AUDIENCE") or DEFAULT_AUDIENCE).split(",")[0].strip()
    print(mint(secret_bytes, args.sub, args.tenants, args.ttl, args.admin, issuer, audience))
    return 0


if __name__ == "__main__":
    sys.exit(main())
