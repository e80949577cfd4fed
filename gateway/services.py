"""What one gateway is made of, built once by `create_app` (the composition root) and found by the views through
`current()`: the store, the port to Keycloak, the realm's keys and the token checks on them, the login policy and
the per-username turns, refresh-token rotation and the ended sessions.

    store          gateway/store/          every piece of cross-request state
    ended          gateway/revocations.py  the ended sessions, mirrored from the store
    keycloak       gateway/keycloak.py     every call to Keycloak
    keys           gateway/tokens.py       the realm's signing keys, cached
    tokens, id_tokens, logout_tokens       the checks of access, ID and logout tokens
    grants         gateway/grants.py       the grants, their answers verified
    turns, login   gateway/userlock.py, gateway/login.py
    rotation       gateway/rotation.py
    readiness      gateway/ops.py
"""

from dataclasses import dataclass

from flask import current_app

from gateway.grants import Grants
from gateway.keycloak import Keycloak
from gateway.login import Login
from gateway.revocations import EndedSessions
from gateway.rotation import Rotation
from gateway.tokens import AccessTokens, IdTokens, LogoutTokens, RealmKeys
from gateway.userlock import SharedTurns, UsernameTurns


@dataclass
class Services:
    settings: object
    store: object
    ended: EndedSessions
    keycloak: Keycloak
    keys: RealmKeys
    tokens: AccessTokens
    id_tokens: IdTokens
    logout_tokens: LogoutTokens
    grants: Grants
    turns: object
    login: Login
    rotation: Rotation
    readiness: object


def build(settings, store):
    """Every object of a gateway, each given what it uses."""
    from gateway.ops import Readiness

    ended = EndedSessions(store)
    keycloak = Keycloak(settings)
    keys = RealmKeys(keycloak.jwks, max_age=settings.keys_max_age)
    tokens = AccessTokens(settings, keys, ended=ended)
    id_tokens, logout_tokens = IdTokens(settings, keys), LogoutTokens(settings, keys)
    grants = Grants(keycloak, tokens, id_tokens)
    if store.redis is None:  # one turn per username on this host, else across every host sharing the store
        turns = UsernameTurns(settings.lock_dir, timeout=settings.timeout, waiters=settings.login_waiters,
                              threads=settings.threads)
    else:
        turns = SharedTurns(store, timeout=settings.timeout, waiters=settings.login_waiters, threads=settings.threads)
    return Services(
        settings=settings, store=store, ended=ended, keycloak=keycloak, keys=keys, tokens=tokens, id_tokens=id_tokens,
        logout_tokens=logout_tokens, grants=grants, turns=turns,
        login=Login(grants, keycloak, turns, settings.hide_account_state, settings.timeout),
        rotation=Rotation(store, settings.client_secret, settings.refresh_grace_seconds, settings.timeout, ended),
        readiness=Readiness(keycloak, keys, settings.issuer))


def current():
    """The app's services, built once by `create_app`."""
    return current_app.extensions["gateway"]
