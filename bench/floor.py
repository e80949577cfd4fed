"""The floor of a refresh on this stack: the refresh grant over a pooled urllib3 connection and the returned
RS256 access token verified with PyJWT, nothing else. The bench runs it under the gateway's gunicorn config
and sends it the gateway's own `POST /api/refresh` requests; it answers the gateway's token body, since
handing back the tokens is part of a refresh."""

import json
import os

import jwt
import urllib3
from flask import Flask, request

LEEWAY_SECONDS = 30


def create_app():
    """The app, configured from the gateway's variables (KEYCLOAK_URL, KEYCLOAK_CLIENT_SECRET...)."""
    base = (os.environ.get("KEYCLOAK_URL") or "http://localhost:8180/auth/").rstrip("/")
    realm = os.environ.get("KEYCLOAK_REALM") or "edm"
    client_id = os.environ.get("KEYCLOAK_CLIENT_ID") or "edmportal"
    form = {"grant_type": "refresh_token", "client_id": client_id,
            "client_secret": os.environ["KEYCLOAK_CLIENT_SECRET"]}
    issuer = f"{base}/realms/{realm}"
    # One pool per worker process (the app is built after the fork), as large as its thread count.
    http = urllib3.PoolManager(maxsize=int(os.environ.get("GATEWAY_THREADS") or 8),
                               timeout=urllib3.Timeout(connect=5, read=5), retries=False)
    token_url = f"{issuer}/protocol/openid-connect/token"
    keys = {}

    def key(kid):
        """The realm's signing key `kid`; the keys fetched again when a token names one not seen yet."""
        if kid not in keys:
            certs = json.loads(http.request("GET", f"{issuer}/protocol/openid-connect/certs").data)
            keys.update({k["kid"]: jwt.PyJWK(k) for k in certs["keys"]
                         if k.get("use") == "sig" and k.get("alg") == "RS256"})
        return keys[kid]

    app = Flask(__name__)
    app.json.sort_keys = False

    @app.post("/api/refresh")
    def refresh():
        """The refresh grant and the new access token's verification."""
        answer = http.request("POST", token_url, fields={**form, "refresh_token": request.json["refreshToken"]},
                              encode_multipart=False)
        if answer.status != 200:
            return {"status": 401, "message": "refresh refused"}, 401
        tokens = json.loads(answer.data)
        access = tokens["access_token"]
        claims = jwt.decode(access, key(jwt.get_unverified_header(access)["kid"]), algorithms=["RS256"],
                            issuer=issuer, leeway=LEEWAY_SECONDS,
                            options={"require": ["exp", "iss", "sub"], "verify_aud": False})
        if claims.get("azp") != client_id or claims.get("typ") != "Bearer":
            return {"status": 401, "message": "not an access token of this client"}, 401
        body = {"status": 200, "message": claims["sub"], "accessToken": access,
                "refreshToken": tokens["refresh_token"], "expiresIn": tokens["expires_in"]}
        return body, 200, {"Cache-Control": "no-store"}

    return app
