"""The login policy of `POST /api/login` and `POST /users/login/`: one password grant per username at a time
(`gateway/userlock.py`), and what Keycloak's "Invalid user credentials" means, told apart by the admin look-ups.

Keycloak words an unknown user, a wrong password, a temporary lock and an overlapping grant of the same user alike;
within the username's turn no grant overlaps, and the look-ups (the user by name, its brute-force status) tell the
other three apart. Enumeration-safe mode (GATEWAY_HIDE_ACCOUNT_STATE) and the SimpleJWT profile make no look-up:
every credential failure is InvalidCredentials there, Keycloak's own words kept as its reason.
"""

from gateway.errors import (
    AccountDisabled,
    AccountLocked,
    AccountNotSetUp,
    InvalidCredentials,
    UpstreamTimeout,
    UsernameNotFound,
    WrongPassword,
)
from gateway.keycloak import CredentialsRejected

ACCOUNT_STATE_REFUSALS = (AccountDisabled, AccountLocked, AccountNotSetUp)


class Login:
    """Logins with the password grant of `grants`, one per username at a time (`turns`), refusals explained by
    the look-ups of `keycloak`."""

    def __init__(self, grants, keycloak, turns, hide_account_state=False, timeout=5.0):
        self.grants = grants
        self.keycloak = keycloak
        self.turns = turns
        self.hide_account_state = hide_account_state
        self.timeout = timeout  # KEYCLOAK_TIMEOUT: how long a grant that timed out may still run in Keycloak

    def __call__(self, username, password, explain=True):
        """The user's tokens; on "Invalid user credentials", one look-up says which failure it was (without
        `explain`, or in enumeration-safe mode, none, and the failure is InvalidCredentials)."""
        with self.turns.hold(username) as turn:
            try:
                body = self.keycloak.password_grant(username, password)
            except UpstreamTimeout:
                turn.settle = self.timeout  # Keycloak may still be working on it: no overlapping grant
                raise
            except CredentialsRejected as exc:
                if not explain or self.hide_account_state:
                    raise InvalidCredentials(exc.reason) from None
                # Within the turn: while another grant of the user is in flight, Keycloak reports it as locked.
                raise self.explained(username, exc.reason) from None
            except ACCOUNT_STATE_REFUSALS as exc:
                # Each tells that the account exists; "disabled" and "not set up", that the password was right.
                if self.hide_account_state:
                    raise InvalidCredentials(exc.reason) from None
                raise
        return self.grants.read(body)  # verified after the turn was passed on

    def explained(self, username, reason):
        """Which failure "Invalid user credentials" was for `username`: unknown, locked or a wrong password."""
        user_id = self.keycloak.user_id(username)
        if user_id is None:
            return UsernameNotFound(reason)
        if self.keycloak.locked(user_id):
            return AccountLocked(reason + " (temporarily locked by brute-force detection)")
        return WrongPassword(reason)
