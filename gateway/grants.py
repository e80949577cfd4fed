"""The realm's grants as the gateway uses their answers: Keycloak's token answer checked and read into Tokens, its
access token verified (`gateway/tokens.py`), the ID token of an authorization code login verified too."""

from dataclasses import dataclass, replace

from gateway.errors import InvalidAccessToken, InvalidIdToken, UpstreamBadResponse


@dataclass(frozen=True)
class Tokens:
    """A token answer of Keycloak, its access token verified."""

    access_token: str
    refresh_token: str
    expires_in: int  # the access token's own lifetime, `exp - iat`
    claims: dict
    refresh_expires_in: int = 0  # seconds until Keycloak's session ends unless refreshed (0: not said)
    id_claims: dict = None  # the verified ID token's claims (authorization code grant only)


class Grants:
    """The password, refresh and authorization code grants of `keycloak` (the port), with verified answers."""

    def __init__(self, keycloak, tokens, id_tokens):
        self.keycloak = keycloak
        self.tokens = tokens
        self.id_tokens = id_tokens

    def password(self, username, password):
        """The password grant; its refusals are Keycloak's (`gateway.keycloak.LOGIN_REFUSALS`)."""
        return self.read(self.keycloak.password_grant(username, password))

    def refresh(self, refresh_token):
        """The refresh grant: new tokens for a live session; InvalidRefreshToken when Keycloak refuses the token."""
        return self.read(self.keycloak.refresh_grant(refresh_token))

    def code(self, code, code_verifier, nonce):
        """The authorization code grant; the access token and the ID token (`nonce`, `iss`, `aud`, `at_hash`)
        verified. LoginFailed when Keycloak refuses the code."""
        body = self.keycloak.code_grant(code, code_verifier)
        tokens = self.read(body)
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamBadResponse("code exchange: no id_token in the answer")
        if not tokens.refresh_expires_in > 0:
            raise UpstreamBadResponse("code exchange: no refresh_expires_in in the answer")
        id_claims = self.id_tokens.verify(id_token, nonce, tokens.access_token)
        if id_claims["sub"] != tokens.claims["sub"] or not isinstance(id_claims.get("sid"), str):
            raise InvalidIdToken("ID token of another user than the access token, or without sid")
        return replace(tokens, id_claims=id_claims)

    def read(self, body):
        """Tokens of a token answer; UpstreamBadResponse for an answer that lacks one or whose token fails."""
        try:
            access, refresh, expires_in = body["access_token"], body["refresh_token"], body["expires_in"]
        except (KeyError, TypeError):
            raise UpstreamBadResponse("token response without access_token, refresh_token or expires_in") from None
        if not (isinstance(access, str) and isinstance(refresh, str) and type(expires_in) is int):
            raise UpstreamBadResponse("token response with fields of the wrong type")
        refresh_expires_in = body.get("refresh_expires_in")
        try:
            claims = self.tokens.verify(access)
        except InvalidAccessToken as exc:
            raise UpstreamBadResponse(f"Keycloak issued a token the gateway cannot verify: {exc.reason}") from None
        # The token's own lifetime: Keycloak's expires_in counts down from its clock as it answers (299 for the
        # same 300-second token when an answer crosses a second).
        issued = claims.get("iat")
        if type(issued) is int and type(claims["exp"]) is int:
            expires_in = claims["exp"] - issued
        return Tokens(access, refresh, expires_in, claims,
                      refresh_expires_in if type(refresh_expires_in) is int else 0)
