"""The audit log: appends, verification pinpointing each kind of tampering, inclusion proofs,
checkpoint cadence and format, the ``parley audit`` commands, concurrent writers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from parley.cli import main
from parley.errors import ConfigError
from parley.store import Database
from parley.trust.audit import AuditLog, AuditSigner, canonical_json, parse_checkpoint
from parley.trust.merkle import (
    CompactRange,
    inclusion_proof,
    leaf_hash,
    tree_root,
    verify_inclusion,
)


@pytest.fixture(scope="module")
def signer() -> AuditSigner:
    return AuditSigner.generate()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def filled(db: Database, signer: AuditSigner, n: int = 10, every: int = 4) -> list[str]:
    log = AuditLog(db, signer, every_records=every, every_s=1e9, clock=Clock())
    return [
        log.append("response.done", tenant="acme", route="local", pii=["email"], n=i)
        for i in range(n)
    ]


def bad(db: Database, signer: AuditSigner, checkpoint: str | None = None) -> tuple[int, str]:
    result = AuditLog(db, signer).verify(checkpoint)
    assert not result.ok, result
    assert result.first_bad_index is not None and result.first_bad_id is not None
    return result.first_bad_index, result.first_bad_id


def test_audit_append_verify_ok(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer)
    assert len(set(ids)) == 10 and all(i.startswith("aud_") for i in ids)
    result = AuditLog(database, signer).verify()
    assert result.ok and result.tree_size == 10
    leaves = [
        bytes.fromhex(r["leaf_hash"])
        for r in database.query("SELECT leaf_hash FROM audit_log ORDER BY seq")
    ]
    assert result.root_hash == tree_root(leaves).hex()
    assert result.line() == f"ok: 10 records, root {result.root_hash}"
    rows = database.query("SELECT seq, data FROM audit_log ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(10))
    assert rows[3]["data"] == canonical_json({"n": 3, "pii": ["email"], "route": "local"})


def test_audit_field_edited_in_place(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer)
    database.execute("UPDATE audit_log SET tenant = 'evil' WHERE seq = 6")
    assert bad(database, signer) == (6, ids[6])


def test_audit_field_edited_and_hash_recomputed(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer)
    row = database.query("SELECT * FROM audit_log WHERE seq = 5")[0]
    data = json.loads(row["data"]) | {"route": "cloud"}
    leaf = {"seq": 5, "id": row["id"], "time": row["time"], "kind": row["kind"]}
    new = leaf_hash(canonical_json({**leaf, "tenant": row["tenant"], "data": data}).encode())
    database.execute(
        "UPDATE audit_log SET data = :d, leaf_hash = :h WHERE seq = 5",
        {"d": canonical_json(data), "h": new.hex()},
    )
    assert bad(database, signer) == (5, ids[5])


def test_audit_record_deleted(database: Database, signer: AuditSigner) -> None:
    filled(database, signer)
    database.execute("DELETE FROM audit_log WHERE seq = 3")
    assert bad(database, signer) == (3, "-")


def test_audit_record_deleted_and_renumbered(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer)
    database.execute("DELETE FROM audit_log WHERE seq = 3")
    for seq in range(4, 10):
        database.execute("UPDATE audit_log SET seq = :s WHERE seq = :o", {"s": seq - 1, "o": seq})
    assert bad(database, signer) == (3, ids[4])


def test_audit_record_inserted(database: Database, signer: AuditSigner) -> None:
    filled(database, signer)
    for seq in range(9, 3, -1):
        database.execute("UPDATE audit_log SET seq = :s WHERE seq = :o", {"s": seq + 1, "o": seq})
    # A forger without the key signs with a key of their own.
    forger = AuditSigner.generate()
    leaf = {"seq": 4, "id": "aud_forged", "time": 1.0, "kind": "key.created", "tenant": ""}
    h = leaf_hash(canonical_json({**leaf, "data": {}}).encode())
    database.execute(
        "INSERT INTO audit_log (seq, id, time, kind, tenant, data, leaf_hash, signature)"
        " VALUES (4, 'aud_forged', 1.0, 'key.created', '', '{}', :h, :s)",
        {"h": h.hex(), "s": forger.sign_record(h)},
    )
    assert bad(database, signer) == (4, "aud_forged")


def test_audit_records_swapped(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer)
    database.execute("UPDATE audit_log SET seq = -1 WHERE seq = 2")
    database.execute("UPDATE audit_log SET seq = 2 WHERE seq = 7")
    database.execute("UPDATE audit_log SET seq = 7 WHERE seq = -1")
    assert bad(database, signer) == (2, ids[7])


def test_audit_truncated_behind_a_published_checkpoint(
    database: Database, signer: AuditSigner
) -> None:
    filled(database, signer)
    published = AuditLog(database, signer).checkpoint()
    assert parse_checkpoint(published, signer).tree_size == 10
    database.execute("DELETE FROM audit_log WHERE seq >= 7")
    database.execute("DELETE FROM audit_checkpoints WHERE tree_size > 4")
    assert AuditLog(database, signer).verify().ok  # consistent by itself ...
    assert bad(database, signer, published) == (7, "-")  # ... but not with what was published


def test_audit_checkpoint_signature_forged(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer)  # checkpoints at 4 and 8
    note = database.query("SELECT note FROM audit_checkpoints WHERE tree_size = 8")[0]["note"]
    head, _, sig = note.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    forged = f"{head} {base64.b64encode(bytes(raw)).decode()}\n"
    database.execute("UPDATE audit_checkpoints SET note = :n WHERE tree_size = 8", {"n": forged})
    assert bad(database, signer) == (4, ids[4])


def test_audit_given_checkpoint_with_another_root(database: Database, signer: AuditSigner) -> None:
    filled(database, signer)
    other = signer.sign_note("parley audit log", 6, hashlib.sha256(b"x").digest())
    assert bad(database, signer, other)[0] == 4  # the last good checkpoint covers 0..3


@pytest.mark.parametrize("size", range(1, 34))
def test_audit_inclusion_proofs_every_index(size: int) -> None:
    hashes = [leaf_hash(str(i).encode()) for i in range(size)]
    root = tree_root(hashes)
    compact = CompactRange()
    for h in hashes:
        compact.append(h)
    assert compact.root() == root
    wrong = leaf_hash(b"wrong")
    for index in range(size):
        proof = inclusion_proof(hashes, index)
        assert verify_inclusion(hashes[index], index, size, proof, root)
        assert not verify_inclusion(wrong, index, size, proof, root)
        assert not verify_inclusion(hashes[index], index, size, proof, leaf_hash(b"root"))
        if size > 1:
            other = (index + 1) % size
            assert not verify_inclusion(hashes[index], other, size, proof, root)
            assert not verify_inclusion(hashes[index], index, size, proof[:-1], root)


def test_audit_prove_against_latest_checkpoint(database: Database, signer: AuditSigner) -> None:
    ids = filled(database, signer, n=11)
    proof = AuditLog(database, signer).prove(ids[9])
    assert proof["index"] == 9 and proof["tree_size"] == 11
    assert proof["record"]["id"] == ids[9]
    assert verify_inclusion(
        bytes.fromhex(proof["leaf_hash"]),
        9,
        11,
        [bytes.fromhex(p) for p in proof["proof"]],
        bytes.fromhex(proof["root_hash"]),
    )
    assert parse_checkpoint(proof["checkpoint"], signer).signed


def test_audit_checkpoint_every_n_records(database: Database, signer: AuditSigner) -> None:
    filled(database, signer, n=10, every=4)
    sizes = [r[0] for r in database.query("SELECT tree_size FROM audit_checkpoints ORDER BY 1")]
    assert sizes == [4, 8]


def test_audit_checkpoint_every_t_seconds(database: Database, signer: AuditSigner) -> None:
    clock = Clock()
    log = AuditLog(database, signer, every_records=1000, every_s=10.0, clock=clock)
    log.append("a")
    clock.now += 5
    log.append("b")
    assert not database.query("SELECT * FROM audit_checkpoints")
    clock.now += 6
    log.append("c")
    assert [r[0] for r in database.query("SELECT tree_size FROM audit_checkpoints")] == [3]
    assert log.checkpoint() == log.checkpoint()  # no growth: no new checkpoint


def test_audit_rolled_back_append_leaves_no_trace(database: Database, signer: AuditSigner) -> None:
    log = AuditLog(database, signer, every_records=1)
    log.append("a")
    with pytest.raises(RuntimeError), database.transaction():
        log.append("b")  # signs a checkpoint at 2, then the caller's transaction rolls back
        raise RuntimeError
    log.append("c")
    log.append("d")
    assert log.verify().ok and log.verify().tree_size == 3


def test_audit_note_format_and_key(signer: AuditSigner) -> None:
    root = hashlib.sha256(b"root").digest()
    note = signer.sign_note("example.com/log", 42, root)
    body, sig_line = note.split("\n\n")
    assert body == f"example.com/log\n42\n{base64.b64encode(root).decode()}"
    assert sig_line.startswith("\u2014 parley-audit ") and sig_line.endswith("\n")
    name, key_id, key = signer.public_key_text().split("+", 2)
    raw_key = base64.b64decode(key)
    assert name == "parley-audit" and raw_key[0] == 1 and len(raw_key) == 33
    expected_id = hashlib.sha256(b"parley-audit\n\x01" + raw_key[1:]).digest()[:4]
    assert key_id == expected_id.hex()
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert blob[:4] == expected_id
    signer.public_key.verify(blob[4:], (body + "\n").encode())
    cp = parse_checkpoint(note, signer)
    assert (cp.origin, cp.tree_size, cp.root, cp.signed) == ("example.com/log", 42, root, True)
    assert not parse_checkpoint(note.replace("42", "43"), signer).signed


def test_audit_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    first = AuditSigner.load_or_create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert AuditSigner.load_or_create(path).public_key_text() == first.public_key_text()
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    raw.chmod(0o600)
    assert AuditSigner.load_or_create(raw).public_key_text().startswith("parley-audit+")
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        AuditSigner.load_or_create(path)


def test_audit_concurrent_appends_keep_seq_contiguous(database_url: str) -> None:
    signer = AuditSigner.generate()
    dbs = [Database(database_url), Database(database_url)]
    try:

        def work(db: Database) -> None:
            log = AuditLog(db, signer, every_records=7)
            for i in range(25):
                log.append("session.opened", n=i)

        threads = [threading.Thread(target=work, args=(db,)) for db in dbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = [r[0] for r in dbs[0].query("SELECT seq FROM audit_log ORDER BY seq")]
        assert seqs == list(range(50))
        assert AuditLog(dbs[0], signer).verify().ok
    finally:
        for db in dbs:
            db.close()


def test_audit_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the key file's default, parley-audit.key, lands here
    monkeypatch.delenv("PARLEY_TRUST_AUDIT_KEY_FILE", raising=False)  # (tests/conftest.py's)
    db_path = tmp_path / "a.db"
    db = ["--set", f"server.database={db_path}"]
    assert main(["audit", "verify", *db]) == 2
    assert "no audit key at parley-audit.key" in capsys.readouterr().err
    assert main(["audit", "key", *db]) == 0
    key_text = capsys.readouterr().out.strip()
    signer = AuditSigner.load_or_create(tmp_path / "parley-audit.key")
    assert key_text == signer.public_key_text()
    with Database(db_path) as database:
        ids = filled(database, signer, n=5)

    assert main(["audit", "checkpoint", *db]) == 0
    note = capsys.readouterr().out
    assert parse_checkpoint(note, signer).tree_size == 5
    (tmp_path / "cp.txt").write_text(note)

    assert main(["audit", "verify", "--checkpoint", "cp.txt", *db]) == 0
    assert capsys.readouterr().out.startswith("ok: 5 records, root ")

    assert main(["audit", "prove", ids[2], *db]) == 0
    proof = json.loads(capsys.readouterr().out)
    assert proof["index"] == 2 and proof["checkpoint"] == note

    assert main(["audit", "export", "--since", "2020-01-01", "--jsonl", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids
    assert main(["audit", "export", "--since", "2099-01-01", "--jsonl", *db]) == 0
    assert capsys.readouterr().out == ""

    with Database(db_path) as database:
        database.execute("DELETE FROM audit_log WHERE seq >= 3")
        database.execute("DELETE FROM audit_checkpoints")
    assert main(["audit", "verify", "--checkpoint", "cp.txt", *db]) == 1
    out, err = capsys.readouterr()
    assert out == "first bad record: index 3 (0-based), id -\n"
    assert "covers 5 records" in err

    assert main(["audit", "prove", "aud_nope", *db]) != 0
    assert "no audit record" in capsys.readouterr().err
