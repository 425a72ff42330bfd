"""Provider API keys encrypted at rest with Fernet; the key material comes from `CCGATE_GATEWAY_SECRET_KEY`.

The `cryptography` library's one home module. Without the variable, storing or reading a provider key is
refused (never stored in clear, never silently dropped).
"""

from __future__ import annotations

import os

from ccgate import env
from ccgate.errors import CcgateError

SECRET_KEY_ENV = env.GATEWAY_SECRET_KEY
MAKE_KEY_HINT = (
    f"set {SECRET_KEY_ENV} to a Fernet key, made with "
    "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`, and keep it "
    "safe: provider keys stored with it cannot be read without it"
)


class SecretKeyError(CcgateError):
    """The encryption key is missing or wrong, so provider keys can be neither stored nor read."""

    status = 500
    error_type = "api_error"
    should_retry = False


def generate_secret_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


class KeyCipher:
    """Encrypts and decrypts provider keys with one Fernet key (MultiFernet-ready: the first key encrypts)."""

    def __init__(self, secret_key: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        try:
            keys = [Fernet(part.strip().encode("ascii")) for part in secret_key.split(",") if part.strip()]
        except (ValueError, UnicodeEncodeError) as error:
            raise SecretKeyError(f"{SECRET_KEY_ENV} is not a valid Fernet key", hint=MAKE_KEY_HINT) from error
        if not keys:
            raise SecretKeyError(f"{SECRET_KEY_ENV} is empty", hint=MAKE_KEY_HINT)
        self._fernet = MultiFernet(keys)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> KeyCipher | None:
        value = (os.environ if environ is None else environ).get(SECRET_KEY_ENV, "")
        return cls(value) if value.strip() else None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken as error:
            raise SecretKeyError(
                f"a stored provider key cannot be decrypted with {SECRET_KEY_ENV}",
                hint="set the key the provider keys were stored with, or store the provider keys again",
            ) from error


def require_cipher(cipher: KeyCipher | None) -> KeyCipher:
    if cipher is None:
        raise SecretKeyError(
            f"{SECRET_KEY_ENV} is not set, so provider keys cannot be stored or read", hint=MAKE_KEY_HINT
        )
    return cipher
