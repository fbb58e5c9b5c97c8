"""The key store on both dialects: tenants, keys, revocation and one-time client secrets."""

from __future__ import annotations

import threading

import pytest

from parley.errors import ClientError
from parley.store import Database
from parley.store.keys import ClientSecret, KeyStore, Limits


def test_keys_create_list_revoke(database: Database) -> None:
    store = KeyStore(database)
    token, key = store.create_key("acme", name="ci", limits=Limits(60, 2, 300))
    assert store.authenticate(token) == key and key.tenant.name == "acme"
    assert [k.id for k in store.list_keys("acme")] == [key.id]
    assert store.list_keys("acme")[0].limits == Limits(60, 2, 300)
    revoked = store.revoke("acme", key.prefix)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.authenticate(token) is None
    with pytest.raises(ClientError, match="has no key"):
        store.revoke("acme", "key_nope")
    with pytest.raises(ClientError, match="unknown tenant"):
        store.list_keys("globex")


def test_keys_new_tenant_from_two_connections_is_created_once(database_url: str) -> None:
    with Database(database_url) as a, Database(database_url) as b:
        stores = [KeyStore(a), KeyStore(b)]
        errors: list[BaseException] = []

        def create(i: int) -> None:
            try:
                stores[i % 2].create_key("newco")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert a.query("SELECT count(*) FROM tenants")[0][0] == 1
        assert len(stores[1].list_keys("newco")) == 8


def test_keys_client_secret_is_redeemed_once_across_connections(database_url: str) -> None:
    with Database(database_url) as a, Database(database_url) as b:
        stores = [KeyStore(a), KeyStore(b)]
        _, key = stores[0].create_key("acme")
        secret, _ = stores[0].create_client_secret(key, {"type": "realtime"})
        results: list[ClientSecret | BaseException | None] = []

        def redeem(i: int) -> None:
            try:
                results.append(stores[i % 2].redeem_client_secret(secret))
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=redeem, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [r for r in results if isinstance(r, ClientSecret)]
        assert len(won) == 1 and results.count(None) == 7
        assert won[0].session == {"type": "realtime"} and won[0].key == key


def test_keys_secret_of_a_revoked_key_is_refused(database: Database) -> None:
    store = KeyStore(database)
    _, key = store.create_key("acme")
    secret, _ = store.create_client_secret(key, {"type": "realtime"})
    store.revoke("acme", key.id)
    assert store.redeem_client_secret(secret) is None
