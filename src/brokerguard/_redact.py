"""Find and hide secrets in URLs: one rule for refusing them and for printing URLs.

A URL can carry a secret in two places: the password of its ``user:password@`` part, and a
parameter (``?password=``, ``&sslpassword=``, ``#token=``, ``;secret=``). The configuration
refuses both (:func:`url_secrets`); everything that prints a URL — status, the status page, the
CLI, error messages — passes it through :func:`redact_url` first, so a URL that reached the code
some other way (a library caller, an old file) is still never shown with its secret.

This module sits with the vocabulary (it imports nothing of ours), so the store and the
coordinator can use it without reaching up into the configuration.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["is_secret_name", "redact_url", "url_secrets"]

MASK = "***"

# SQLAlchemy reads ``user:password@`` with the password running to the first "@" (``[^@]*``),
# so a password may hold "/" or "?": match the way it does, not the way urlsplit does. (A query
# value holding "@" after a port therefore reads as a password too: refused, and masked.)
_USERINFO = re.compile(r"^(?P<user>[^:/@]*):(?P<password>[^@]*)@")
# A URL inside a parameter's value (``?next=https://u:pw@host``) hides its password the same way.
_NESTED_USERINFO = re.compile(r"(?P<head>://[^:/@\s?&#]*):(?P<password>[^@\s/?&#]+)@")
_PARAM = re.compile(r"(?P<sep>^|[?&;#\s])(?P<name>[^=&;#?\s]*)=(?P<value>[^&;#\s]*)")

# A parameter whose (lowercased, punctuation-free) name contains one of these holds a secret:
# password, passwd, sslpassword, ssl_password, passphrase, client_secret, access_token, api_key...
_SECRET_PARTS = (
    "passw",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "signature",
)
# ...or is exactly one of these. ``passfile``, ``sslkey`` and ``ssl_keyfile`` name FILES (a
# .pgpass, a client key) and stay allowed: pointing at a file is how a secret stays out.
_SECRET_NAMES = frozenset({"pass", "key", "auth", "sig", "apisecret"})


def is_secret_name(name: str) -> bool:
    """Return True if a URL parameter called `name` would hold a secret (case-insensitive)."""
    plain = re.sub(r"[^a-z0-9]", "", unquote(name).lower())
    return plain in _SECRET_NAMES or any(part in plain for part in _SECRET_PARTS)


def url_secrets(url: str) -> list[str]:
    """Return where `url` carries a secret, by part name only (never the secret itself)."""
    rest = _split(url)[1]
    found = []
    userinfo = _USERINFO.match(rest)
    if userinfo and userinfo["password"]:
        found.append("a password in its user:password@ part")
    if _NESTED_USERINFO.search(rest):
        found.append("a password in a URL inside it")
    found += [
        f"a secret in its parameter {unquote(m['name'])!r}"
        for m in _PARAM.finditer(rest)
        if is_secret_name(m["name"])
    ]
    return found


def redact_url(url: str) -> str:
    """Return `url` with its password and every secret parameter replaced by ``***``.

    Never raises: anything that is not a URL is scanned for ``name=value`` pairs the same way,
    because a string that is about to be printed must be made safe whatever it is.
    """
    head, rest = _split(url)
    rest = _USERINFO.sub(
        lambda m: f"{m['user']}:{MASK}@" if m["password"] else m.group(0), rest, count=1
    )
    rest = _PARAM.sub(
        lambda m: f"{m['sep']}{m['name']}={MASK}" if is_secret_name(m["name"]) else m.group(0),
        rest,
    )
    rest = _NESTED_USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", rest)
    return f"{head}{rest}"


def _split(url: str) -> tuple[str, str]:
    """Split off ``scheme://`` (the first one: a parameter's value may hold another URL)."""
    head, sep, rest = url.partition("://")
    return (head + sep, rest) if sep else ("", url)
