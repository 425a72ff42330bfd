"""Provider keys and the virtual key: env var, then the OS keyring, then a 0600 file where no keyring exists.

This is the only module that imports `keyring`. Every function here is synchronous and may block (the
SecretService backend talks D-Bus), so servers call them off the event loop — `await asyncio.to_thread(...)` —
at start-up or on reload, never per request.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ccgate.core.providers import key_env_var
from ccgate.errors import SecretStoreError

if TYPE_CHECKING:
    from ccgate.local.paths import Paths

# One keyring service; usernames are namespaced so no provider name can collide with the virtual key.
SERVICE = "ccgate"
VIRTUAL_KEY_USERNAME = "virtual-key"
PROVIDER_PREFIX = "provider:"

KeySource = Literal["env", "keyring", "file"]


def _paths(paths: Paths | None) -> Paths:
    """The file fallback's location; callers with their own environment pass their `Paths`."""
    if paths is not None:
        return paths
    from ccgate.local.paths import resolve_paths

    return resolve_paths()


def _keyring_backend() -> Any | None:
    """The active keyring backend, or None when keyring only offers its 'fail'/'null' placeholders."""
    import keyring
    from keyring.backends import chainer, fail, null

    backend = keyring.get_keyring()
    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return None
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return None
    return backend


def _redact(text: str, value: str | None) -> str:
    return text.replace(value, "***") if value else text


def _keyring_failure(action: str, username: str, exc: Exception, value: str | None = None) -> SecretStoreError:
    detail = _redact(str(exc), value) or type(exc).__name__
    return SecretStoreError(
        f"keyring could not {action} the secret for {username!r}: {detail}",
        hint=(
            "unlock your keyring (e.g. log in to the desktop session), "
            "or set the matching CCGATE_<PROVIDER>_API_KEY environment variable instead"
        ),
    )


# --- file fallback ---------------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, str]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SecretStoreError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretStoreError(f"{path} is readable by other users, refusing to use it", hint=f"run `chmod 600 {path}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError, RecursionError) as exc:
        raise SecretStoreError(
            f"{path} is not a readable secrets file", hint="delete it and store the keys again"
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SecretStoreError(f"{path} is not a ccgate secrets file", hint="delete it and store the keys again")
    return {str(k): v for k, v in data.items()}


def _write_file(path: Path, data: Mapping[str, str]) -> None:
    """Temp file created 0600 from the start, then renamed: never a moment where the secret is world-readable."""
    from ccgate.local.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_atomic(path, json.dumps(dict(data), indent=2, sort_keys=True), mode=0o600)
    except OSError as exc:
        raise SecretStoreError(
            f"cannot write {path}: {exc.strerror}", hint="check the directory's permissions"
        ) from exc


# --- generic secrets ---------------------------------------------------------------------------------------------


def get_secret(username: str, *, paths: Paths | None = None) -> str | None:
    backend = _keyring_backend()
    if backend is None:
        return _read_file(_paths(paths).secrets_file).get(username)
    from keyring.errors import KeyringError

    try:
        value = backend.get_password(SERVICE, username)
    except KeyringError as exc:
        raise _keyring_failure("read", username, exc) from exc
    return value if isinstance(value, str) else None


def set_secret(username: str, value: str, *, paths: Paths | None = None) -> None:
    if not value:
        raise SecretStoreError(f"refusing to store an empty secret for {username!r}", hint="pass a non-empty value")
    backend = _keyring_backend()
    if backend is None:
        path = _paths(paths).secrets_file
        data = _read_file(path)
        data[username] = value
        _write_file(path, data)
        return
    from keyring.errors import KeyringError

    try:
        backend.set_password(SERVICE, username, value)
    except KeyringError as exc:
        raise _keyring_failure("store", username, exc, value) from exc


def delete_secret(username: str, *, paths: Paths | None = None) -> bool:
    """True if something was deleted."""
    backend = _keyring_backend()
    if backend is None:
        path = _paths(paths).secrets_file
        data = _read_file(path)
        if username not in data:
            return False
        del data[username]
        _write_file(path, data)
        return True
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        if backend.get_password(SERVICE, username) is None:
            return False
        backend.delete_password(SERVICE, username)
    except PasswordDeleteError:
        return False
    except KeyringError as exc:
        raise _keyring_failure("delete", username, exc) from exc
    return True


# --- provider keys -----------------------------------------------------------------------------------------------


def provider_username(name: str) -> str:
    """`groq` -> `provider:groq`: the keyring username (and file-fallback key) of a provider's API key."""
    return f"{PROVIDER_PREFIX}{name}"


def get_provider_key(name: str, environ: Mapping[str, str], *, paths: Paths | None = None) -> str | None:
    """`CCGATE_<NAME>_API_KEY` wins over the stored key."""
    from_env = environ.get(key_env_var(name))
    if from_env:
        return from_env
    return get_secret(provider_username(name), paths=paths)


def provider_key_source(name: str, environ: Mapping[str, str], *, paths: Paths | None = None) -> KeySource | None:
    """Where a provider's key would come from, without handing the value to the caller."""
    if environ.get(key_env_var(name)):
        return "env"
    if get_secret(provider_username(name), paths=paths) is None:
        return None
    return "file" if _keyring_backend() is None else "keyring"


def has_provider_key(name: str, environ: Mapping[str, str], *, paths: Paths | None = None) -> bool:
    return provider_key_source(name, environ, paths=paths) is not None


def set_provider_key(name: str, value: str, *, paths: Paths | None = None) -> None:
    set_secret(provider_username(name), value.strip(), paths=paths)


def delete_provider_key(name: str, *, paths: Paths | None = None) -> bool:
    return delete_secret(provider_username(name), paths=paths)


def backend_description(*, paths: Paths | None = None) -> tuple[str, bool]:
    """(human name of where secrets go, whether it is the plain-file fallback) — for `doctor`."""
    backend = _keyring_backend()
    if backend is None:
        return f"file {_paths(paths).secrets_file} (mode 0600; no keyring backend available)", True
    cls = type(backend)
    return f"keyring: {cls.__module__}.{cls.__qualname__}", False
