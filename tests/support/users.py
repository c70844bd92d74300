"""What ``getpass.getuser()`` answers in a container whose uid has no passwd entry.

kopf names its peering identity with ``getpass.getuser()``: it reads ``LOGNAME``, ``USER``,
``LNAME`` and ``USERNAME`` from the environment, then falls back to the passwd database,
which has no entry for the images' numeric uids (65532), so it raises there.
"""

from __future__ import annotations

import getpass
import pwd
from collections.abc import Mapping

import pytest

NAME_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def getuser_without_passwd_entry(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``getpass.getuser()`` with exactly ``env``'s name variables and no passwd entry;
    raises as it would there (KeyError on 3.11, OSError from 3.13)."""
    for var in NAME_VARIABLES:
        monkeypatch.delenv(var, raising=False)
        if var in env:
            monkeypatch.setenv(var, env[var])

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    return getpass.getuser()
