"""Secrets: env var over keyring, keyring round trips, the 0600 file fallback, and values never in messages."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.errors import KeyringError

from ccgate import env
from ccgate.errors import SecretStoreError
from ccgate.local import secrets
from ccgate.local.paths import resolve_paths

SECRET = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def empty_memory_keyring() -> Iterator[None]:
    """tests/support's MemoryKeyring keeps one class-level dict; start and end each test with it empty."""
    store = getattr(keyring.get_keyring(), "_store", None)
    assert isinstance(store, dict)
    store.clear()
    yield
    store.clear()


@pytest.fixture
def no_keyring() -> Iterator[None]:
    """A machine without any keyring backend: keyring only offers its 'fail' placeholder."""
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]
    yield
    keyring.set_keyring(previous)


class BrokenKeyring(KeyringBackend):
    """A locked keyring whose error text (badly) repeats the value it was given."""

    priority = 1

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringError("keyring is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringError(f"cannot store {password}: collection is locked")

    def delete_password(self, service: str, username: str) -> None:
        raise KeyringError("keyring is locked")


def test_keyring_round_trip() -> None:
    assert secrets.get_provider_key("groq", {}) is None
    assert not secrets.has_provider_key("groq", {})
    secrets.set_provider_key("groq", f"  {SECRET}\n")
    assert secrets.get_provider_key("groq", {}) == SECRET
    assert keyring.get_password("ccgate", "provider:groq") == SECRET  # service "ccgate", username provider:NAME
    assert keyring.get_password("ccgate", "groq") is None
    assert secrets.provider_key_source("groq", {}) == "keyring"
    assert secrets.has_provider_key("groq", {})
    assert secrets.delete_provider_key("groq") is True
    assert secrets.delete_provider_key("groq") is False
    assert secrets.get_provider_key("groq", {}) is None
    name, is_file = secrets.backend_description()
    assert not is_file and "MemoryKeyring" in name


def test_env_var_overrides_keyring() -> None:
    secrets.set_provider_key("my-proxy", "from-keyring")
    environ = {"CCGATE_MY_PROXY_API_KEY": "from-env"}
    assert secrets.get_provider_key("my-proxy", environ) == "from-env"
    assert secrets.provider_key_source("my-proxy", environ) == "env"
    assert secrets.get_provider_key("my-proxy", {"CCGATE_MY_PROXY_API_KEY": ""}) == "from-keyring"


def test_generic_secret_for_the_virtual_key() -> None:
    secrets.set_secret(secrets.VIRTUAL_KEY_USERNAME, "sk-cg-abc")
    assert secrets.get_secret("virtual-key") == "sk-cg-abc"
    assert secrets.delete_secret("virtual-key")
    assert secrets.get_secret("virtual-key") is None


def test_provider_keys_and_the_virtual_key_never_share_a_name() -> None:
    """A provider called `virtual-key` (were it allowed) still could not overwrite the org's virtual key."""
    secrets.set_secret(secrets.VIRTUAL_KEY_USERNAME, "sk-cg-org")
    secrets.set_provider_key("virtual-key", "sk-provider")
    assert secrets.get_secret(secrets.VIRTUAL_KEY_USERNAME) == "sk-cg-org"
    assert secrets.get_provider_key("virtual-key", {}) == "sk-provider"
    assert secrets.delete_provider_key("virtual-key") is True
    assert secrets.get_secret("virtual-key") == "sk-cg-org"
    assert keyring.get_password("ccgate", "virtual-key") == "sk-cg-org"


def test_empty_secret_is_refused() -> None:
    with pytest.raises(SecretStoreError):
        secrets.set_provider_key("groq", "   ")


@pytest.mark.usefixtures("no_keyring")
def test_file_fallback_without_keyring(isolated_home: Path) -> None:
    secrets_file = resolve_paths().secrets_file
    assert secrets_file.is_relative_to(isolated_home)
    name, is_file = secrets.backend_description()
    assert is_file and str(secrets_file) in name

    secrets.set_provider_key("groq", SECRET)
    secrets.set_secret("virtual-key", "sk-cg-xyz")
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert secrets.get_provider_key("groq", {}) == SECRET
    assert secrets.provider_key_source("groq", {}) == "file"
    assert secrets.get_secret("virtual-key") == "sk-cg-xyz"
    assert set(json.loads(secrets_file.read_text())) == {"provider:groq", "virtual-key"}
    assert secrets.delete_provider_key("groq") is True
    assert secrets.delete_provider_key("groq") is False
    assert SECRET not in secrets_file.read_text()
    assert not list(secrets_file.parent.glob(".*tmp"))  # no temp files left behind


@pytest.mark.usefixtures("no_keyring")
def test_file_fallback_refuses_a_world_readable_file() -> None:
    secrets.set_provider_key("groq", SECRET)
    secrets_file = resolve_paths().secrets_file
    secrets_file.chmod(0o644)
    with pytest.raises(SecretStoreError) as info:
        secrets.get_provider_key("groq", {})
    assert "chmod 600" in (info.value.hint or "")
    assert SECRET not in info.value.full_message()


def test_keyring_errors_become_secret_store_errors_without_the_value() -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())  # type: ignore[no-untyped-call]
    try:
        with pytest.raises(SecretStoreError) as info:
            secrets.set_provider_key("groq", SECRET)
        assert SECRET not in info.value.full_message()
        assert "groq" in info.value.message and info.value.hint
        with pytest.raises(SecretStoreError):
            secrets.get_provider_key("groq", {})
        # the env var still works when the keyring is locked
        assert secrets.get_provider_key("groq", {"CCGATE_GROQ_API_KEY": "env-key"}) == "env-key"
    finally:
        keyring.set_keyring(previous)


_REAL_KEYRING_SCRIPT = textwrap.dedent(
    """
    from ccgate.local import secrets
    secrets.set_provider_key("groq", "sk-real-keyring-test")
    assert secrets.get_provider_key("groq", {}) == "sk-real-keyring-test"
    name, is_file = secrets.backend_description()
    print("BACKEND", name, is_file)
    print("SOURCE", secrets.provider_key_source("groq", {}))
    print("DELETED", secrets.delete_provider_key("groq"), secrets.get_provider_key("groq", {}))
    """
)


@pytest.mark.real_keyring
@pytest.mark.skipif(os.environ.get(env.TEST_REAL_KEYRING) != "1", reason=f"set {env.TEST_REAL_KEYRING}=1")
def test_real_secret_service_keyring(tmp_path: Path) -> None:
    """A real gnome-keyring over a private D-Bus session: what a Linux desktop user gets."""
    for tool in ("dbus-run-session", "gnome-keyring-daemon"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: apt-get install gnome-keyring dbus-x11)")
    home = tmp_path / "keyring-home"
    home.mkdir()
    script = tmp_path / "roundtrip.py"
    script.write_text(_REAL_KEYRING_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND" and not k.startswith("DBUS_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local/share"), CCGATE_HOME=str(tmp_path / "ccgate"))
    inner = (
        "echo throwaway-password | gnome-keyring-daemon --unlock --components=secrets >/dev/null; "
        f'exec "{sys.executable}" "{script}"'
    )
    result = subprocess.run(
        ["dbus-run-session", "--", "sh", "-c", inner],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BACKEND keyring: keyring.backends.SecretService.Keyring False" in result.stdout
    assert "SOURCE keyring" in result.stdout
    assert "DELETED True None" in result.stdout
    assert not (tmp_path / "ccgate" / "data" / "secrets.json").exists()  # the file fallback was not used
