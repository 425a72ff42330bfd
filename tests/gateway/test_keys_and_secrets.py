"""Virtual keys (revoked, expired, rotated with grace), admin tokens, encrypted provider keys, odd names, audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ccgate.storage.gateway import GatewayStore, SecretKeyError
from ccgate.storage.gateway.crypto import SECRET_KEY_ENV, KeyCipher, generate_secret_key


async def _team(store: GatewayStore) -> None:
    await store.create_customer("acme")
    await store.create_team("core", customer="acme")


async def test_revoked_key_is_refused(store: GatewayStore) -> None:
    await _team(store)
    created = await store.create_key(team="core", name="bob")
    assert await store.authenticate_key(created.plaintext) is not None
    await store.revoke_key("bob", actor="admin")
    assert await store.authenticate_key(created.plaintext) is None
    # the name is free again for a new key
    again = await store.create_key(team="core", name="bob")
    assert await store.authenticate_key(again.plaintext) is not None


async def test_expired_key_is_refused(store: GatewayStore) -> None:
    await _team(store)
    expiry = datetime.now(UTC) + timedelta(days=1)
    created = await store.create_key(team="core", name="carol", expires_at=expiry)
    assert await store.authenticate_key(created.plaintext, now=expiry - timedelta(seconds=1)) is not None
    assert await store.authenticate_key(created.plaintext, now=expiry) is None


async def test_rotated_key_works_for_its_grace_period_only(store: GatewayStore) -> None:
    await _team(store)
    old = await store.create_key(team="core", name="dave")
    rotated = await store.rotate_key("dave", grace=timedelta(hours=1), actor="admin")
    assert rotated.key.id == old.key.id
    assert rotated.plaintext != old.plaintext
    now = datetime.now(UTC)
    via_old = await store.authenticate_key(old.plaintext, now=now)
    assert via_old is not None and via_old.via_previous
    via_new = await store.authenticate_key(rotated.plaintext, now=now + timedelta(days=3))
    assert via_new is not None and not via_new.via_previous
    assert await store.authenticate_key(old.plaintext, now=now + timedelta(hours=1, seconds=1)) is None
    # revoking ends the grace too
    await store.revoke_key("dave")
    assert await store.authenticate_key(old.plaintext, now=now) is None
    assert await store.authenticate_key(rotated.plaintext, now=now) is None


async def test_secrets_never_reach_records_or_the_audit_log(store: GatewayStore) -> None:
    await _team(store)
    created = await store.create_key(team="core", name="erin", actor="root")
    rotated = await store.rotate_key("erin", grace=timedelta(0), actor="root")
    token = await store.create_admin_token("finance", role="viewer", actor="root")
    await store.put_provider("anthropic", kind="anthropic", api_key="sk-ant-secret-123", actor="root")
    entries = await store.list_audit()
    text = repr(entries) + repr(created.key) + repr(rotated) + repr(token)
    for secret in (created.plaintext, rotated.plaintext, token.plaintext, "sk-ant-secret-123"):
        assert secret not in text
    assert {e.actor for e in entries} == {"root"}
    assert [e.action for e in entries][::-1] == ["key.create", "key.rotate", "admin_token.create", "provider.put"]
    rows = await store.db.fetch("SELECT before_json, after_json FROM audit_log")
    for secret in (created.plaintext, rotated.plaintext, token.plaintext, "sk-ant-secret-123"):
        assert secret not in repr(rows)
    authenticated = await store.authenticate_admin(token.plaintext)
    assert authenticated is not None and authenticated.role == "viewer"
    await store.revoke_admin_token("finance")
    assert await store.authenticate_admin(token.plaintext) is None


async def test_provider_key_is_encrypted_at_rest(store: GatewayStore) -> None:
    plaintext = "sk-ant-api03-very-secret"
    await store.put_provider("anthropic", kind="anthropic", base_url="http://127.0.0.1:9", api_key=plaintext)
    (raw,) = await store.db.fetch("SELECT api_key_encrypted FROM provider_configs")
    assert raw[0] and plaintext not in raw[0]
    assert await store.provider_api_key("anthropic") == plaintext
    config = await store.get_provider("anthropic")
    assert config.has_api_key and plaintext not in repr(config)
    # replacing the base URL keeps the stored key
    await store.put_provider("anthropic", kind="anthropic", base_url="http://127.0.0.1:10")
    assert await store.provider_api_key("anthropic") == plaintext
    assert await store.has_stored_provider_keys()


async def test_provider_keys_are_refused_without_the_secret_key(db_url: str, store: GatewayStore) -> None:
    await store.put_provider("anthropic", kind="anthropic", api_key="sk-ant-stored")
    keyless = await GatewayStore.open(db_url, cipher=KeyCipher.from_env({}))
    try:
        with pytest.raises(SecretKeyError, match=SECRET_KEY_ENV):
            await keyless.put_provider("openai", kind="openai", api_key="sk-new")
        with pytest.raises(SecretKeyError, match=SECRET_KEY_ENV):
            await keyless.provider_api_key("anthropic")
        assert [p.name for p in await keyless.list_providers()] == ["anthropic"]  # nothing stored in clear
        await keyless.put_provider("local", kind="openai")  # a provider without a key needs no secret
    finally:
        await keyless.close()
    wrong = await GatewayStore.open(db_url, cipher=KeyCipher(generate_secret_key()))
    try:
        with pytest.raises(SecretKeyError, match="cannot be decrypted"):
            await wrong.provider_api_key("anthropic")
    finally:
        await wrong.close()
    with pytest.raises(SecretKeyError):
        KeyCipher("not a fernet key")


@pytest.mark.parametrize(
    "name",
    ['O\'Brien "quoted"; DROP TABLE teams; --', "what? $1 ?? %s %(x)s", "Ünïcødé ✓ 名前", "a\\b' OR '1'='1"],
)
async def test_sql_ish_names_are_stored_verbatim(store: GatewayStore, name: str) -> None:
    await store.create_customer(name)
    team = await store.create_team(name + " team", customer=name)
    created = await store.create_key(team=team.name, name=name, tier_overrides={"haiku": name})
    assert (await store.get_customer(name)).name == name
    assert [c.name for c in await store.list_customers()] == [name]
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
    assert identity.key.name == name and identity.team.name == name + " team"
    assert identity.key.tier_overrides == {"haiku": name}
    assert (await store.get_key(name)).id == created.key.id
    assert [t.name for t in await store.list_teams()] == [name + " team"]
