"""BFF logins under way (gateway/logins.py): sealed into the browser's login cookie, nothing stored before the
callback, each state spent once, a few tabs at a time, and the PKCE challenge as RFC 7636 computes it."""

import time

import pytest

from gateway.errors import LoginFailed
from gateway.logins import LOGIN_SECONDS, Logins, code_challenge
from gateway.store.host import HostStore

SECRET = "a-session-secret-of-at-least-32-characters"


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture
def store(tmp_path):
    return HostStore(str(tmp_path / "state"))


def entries(store):
    return store._run("count", "SELECT count(*) FROM entries", rows=True)[0][0]


def test_a_login_start_stores_nothing_and_its_callback_spends_the_state_once(store):
    logins = Logins(store, SECRET)
    cookie, started = logins.begin(None, "/after")
    assert entries(store) == 0  # anonymous starts cannot fill the store
    rest, finished = logins.finish(cookie, started.state)
    assert (finished.nonce, finished.verifier, finished.return_url) == (started.nonce, started.verifier, "/after")
    assert rest == ""  # no other login under way: the cookie can go
    assert entries(store) == 1  # the spent state, an HMAC of it
    with pytest.raises(LoginFailed, match="already used"):
        logins.finish(cookie, started.state)  # a replayed callback, with a copy of the cookie


def test_a_login_finishes_only_in_the_browser_that_started_it(store):
    logins = Logins(store, SECRET)
    cookie_a, started = logins.begin(None, "/after")
    cookie_b, _ = logins.begin(None, "/elsewhere")
    for other in (cookie_b, None, "", "garbage", cookie_a[:-2] + "AA"):
        with pytest.raises(LoginFailed, match="did not start"):
            logins.finish(other, started.state)
    with pytest.raises(LoginFailed, match="without state"):
        logins.finish(cookie_a, "")
    assert logins.finish(cookie_a, started.state)[1].return_url == "/after"  # the failed tries spent nothing


def test_a_browser_keeps_its_last_three_logins_and_each_finishes_once(store):
    logins = Logins(store, SECRET)
    cookie, started = None, []
    for tab in range(4):
        cookie, login = logins.begin(cookie, f"/tab{tab}")
        started.append(login)
    assert len(cookie) < 3200  # well inside a browser's 4 KiB cookie, with the longest returnUrl (below)
    with pytest.raises(LoginFailed, match="did not start"):
        logins.finish(cookie, started[0].state)  # the oldest made room
    cookie, finished = logins.finish(cookie, started[2].state)
    assert finished.return_url == "/tab2"
    cookie, finished = logins.finish(cookie, started[1].state)
    assert finished.return_url == "/tab1"
    assert logins.finish(cookie, started[3].state)[0] == ""


def test_the_longest_return_urls_of_three_tabs_fit_in_one_cookie(store):
    logins = Logins(store, SECRET)
    cookie = None
    for _ in range(3):
        cookie, _ = logins.begin(cookie, "/" + "a" * 511)
    assert len("__Host-edm-login=" + cookie) < 4000


def test_return_urls_that_json_makes_longer_push_the_oldest_tab_out_not_every_login(store):
    logins = Logins(store, SECRET)
    cookie, started = None, []
    for _ in range(3):  # each `"` is two characters in the sealed record
        cookie, login = logins.begin(cookie, "/" + '"' * 511)
        started.append(login)
    assert len(cookie) <= 4096
    with pytest.raises(LoginFailed):
        logins.finish(cookie, started[0].state)
    rest, finished = logins.finish(cookie, started[2].state)
    assert finished.return_url == "/" + '"' * 511
    assert logins.finish(rest, started[1].state)[1].state == started[1].state


def test_a_login_expires_after_its_time(store):
    clock = Clock()
    logins = Logins(store, SECRET, clock=clock)
    cookie, started = logins.begin(None, "/after")
    clock.now += LOGIN_SECONDS + 1
    with pytest.raises(LoginFailed, match="expired"):
        logins.finish(cookie, started.state)
    assert LOGIN_SECONDS == 600


def test_a_cookie_of_another_secret_holds_no_login_and_the_previous_secret_is_read(store):
    cookie, started = Logins(store, SECRET).begin(None, "/after")
    with pytest.raises(LoginFailed):
        Logins(store, SECRET + "-other").finish(cookie, started.state)
    rotated = Logins(store, SECRET + "-other", previous_secrets=(SECRET,))
    assert rotated.finish(cookie, started.state)[1].return_url == "/after"


def test_the_pkce_challenge_is_rfc_7636s():
    # RFC 7636, appendix B
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
