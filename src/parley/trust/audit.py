"""The tamper-evident audit log: append-only records, an RFC 6962 Merkle tree over them, and
Ed25519-signed checkpoints in the C2SP ``tlog-checkpoint`` signed-note format.

**Records.** :meth:`AuditLog.append` stores one record (``seq`` = its 0-based leaf index, an
``aud_`` id, the time, a ``kind`` such as ``session.opened``, the tenant and a JSON object of
facts) in the ``audit_log`` table, in one transaction, so that ``seq`` has no gaps whatever
the number of writers. The leaf is the canonical JSON (sorted keys, no spaces, UTF-8) of
``{seq, id, time, kind, tenant, data}``; its hash is SHA-256(0x00 || leaf). Callers decide what
``data`` holds: PII *classes*, never values, and no transcript text unless configured.

**Signatures.** Each record also carries an Ed25519 signature over its leaf hash, so that
verification names the exact first record that was edited, inserted, renumbered or reordered,
even when whoever edited it recomputed ``leaf_hash`` (a root alone only says *some* leaf under a
checkpoint changed). Every ``every_records`` records or ``every_s`` seconds, the next append also
signs a checkpoint: the note ``ORIGIN\\nSIZE\\nBASE64(ROOT)\\n`` plus a signature line, kept in
``audit_checkpoints``; published elsewhere, a checkpoint catches a log truncated behind it.

**What it must not do.** Update or delete a record; trust a stored hash, root or compact range
without recomputing it in :meth:`AuditLog.verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from parley.errors import ConfigError
from parley.ids import new_id
from parley.store import Database
from parley.trust.keyfile import private_file
from parley.trust.merkle import CompactRange, inclusion_proof, leaf_hash, verify_inclusion

__all__ = [
    "AuditLog",
    "AuditSigner",
    "Checkpoint",
    "VerifyResult",
    "parse_checkpoint",
    "verify_inclusion",
]

DEFAULT_ORIGIN: Final = "parley audit log"
DEFAULT_KEY_NAME: Final = "parley-audit"
_ED25519: Final = b"\x01"  # the signed-note algorithm byte for Ed25519
_DASH: Final = "\u2014"  # a signature line starts with an em dash and a space
# Domain separation: a record signature can never be replayed as a note signature.
_RECORD_CONTEXT: Final = b"parley audit record\n"
_PAGE: Final = 1000
_COLUMNS: Final = "seq, id, time, kind, tenant, data, leaf_hash, signature"


def canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _leaf_bytes(seq: int, record_id: str, at: float, kind: str, tenant: str, data: Any) -> bytes:
    record = {"seq": seq, "id": record_id, "time": at, "kind": kind, "tenant": tenant}
    return canonical_json({**record, "data": data}).encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class AuditSigner:
    """The Ed25519 key that signs records and checkpoints, named ``key_name`` in signed notes."""

    def __init__(self, private_key: Ed25519PrivateKey, key_name: str = DEFAULT_KEY_NAME) -> None:
        if not key_name or "+" in key_name or any(c.isspace() for c in key_name):
            raise ConfigError(f"audit key name {key_name!r} must be non-empty, no spaces or '+'")
        self._private = private_key
        self.key_name = key_name
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self._public_raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = _key_id(key_name, self._public_raw)

    @classmethod
    def generate(cls, key_name: str = DEFAULT_KEY_NAME) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate(), key_name)

    @classmethod
    def load_or_create(cls, path: Path, key_name: str = DEFAULT_KEY_NAME) -> AuditSigner:
        """The key in ``path`` (PEM PKCS#8 or the raw 32-byte seed), or a new one written there
        (PEM, mode 0600). A file that group or others may read is refused."""

        def new_key() -> bytes:
            return Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )

        raw = private_file(Path(path), "audit key file", new_key)
        try:
            if len(raw) == 32:
                key = Ed25519PrivateKey.from_private_bytes(raw)
            else:
                loaded = serialization.load_pem_private_key(raw, password=None)
                if not isinstance(loaded, Ed25519PrivateKey):
                    raise ValueError("not an Ed25519 key")
                key = loaded
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"audit key file {path} is not an Ed25519 private key: {exc}"
            ) from exc
        return cls(key, key_name)

    def public_key_text(self) -> str:
        """The note verifier key: ``NAME+KEYID(8 hex)+BASE64(0x01 || public key)``."""
        return f"{self.key_name}+{self.key_id.hex()}+{_b64(_ED25519 + self._public_raw)}"

    def sign_record(self, leaf: bytes) -> str:
        return _b64(self._private.sign(_RECORD_CONTEXT + leaf))

    def record_signature_ok(self, leaf: bytes, signature: str) -> bool:
        try:
            self.public_key.verify(
                base64.b64decode(signature, validate=True), _RECORD_CONTEXT + leaf
            )
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def sign_note(self, origin: str, tree_size: int, root: bytes) -> str:
        body = f"{origin}\n{tree_size}\n{_b64(root)}\n"
        signature = self._private.sign(body.encode())
        return f"{body}\n{_DASH} {self.key_name} {_b64(self.key_id + signature)}\n"


def _key_id(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public_raw).digest()[:4]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed tlog-checkpoint note; ``signed`` says whether a signature line by the given
    key verifies over its body."""

    origin: str
    tree_size: int
    root: bytes
    signed: bool
    note: str


def parse_checkpoint(note: str, signer: AuditSigner) -> Checkpoint:
    """Parse a signed note; raise ValueError when it is not a checkpoint at all."""
    body, sep, sigs = note.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 3:
        raise ValueError("not a signed checkpoint note (origin, size, root, blank line)")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit():
        raise ValueError(f"checkpoint tree size {size_text!r} is not a number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise ValueError("checkpoint root hash is not base64") from None
    if len(root) != 32:
        raise ValueError("checkpoint root hash is not 32 bytes")
    signed = False
    for line in sigs.split("\n"):
        prefix = f"{_DASH} {signer.key_name} "
        if not line.startswith(prefix):
            continue
        try:
            blob = base64.b64decode(line[len(prefix) :], validate=True)
        except binascii.Error:
            continue
        if blob[:4] != signer.key_id:
            continue
        try:
            signer.public_key.verify(blob[4:], (body + "\n").encode())
        except InvalidSignature:
            continue
        signed = True
    return Checkpoint(origin, int(size_text), root, signed, note)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :meth:`AuditLog.verify` found: ``ok``, or the first bad record's 0-based index and
    id (``-`` when the record is gone) and why; ``tree_size`` and ``root_hash`` of the log as
    stored."""

    ok: bool
    first_bad_index: int | None
    first_bad_id: str | None
    reason: str
    tree_size: int = 0
    root_hash: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok: {self.tree_size} records, root {self.root_hash}"
        return f"first bad record: index {self.first_bad_index} (0-based), id {self.first_bad_id}"


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": int(row["seq"]),
        "id": row["id"],
        "time": float(row["time"]),
        "kind": row["kind"],
        "tenant": row["tenant"],
        "data": json.loads(row["data"]),
        "leaf_hash": row["leaf_hash"],
        "signature": row["signature"],
    }


@dataclass(slots=True)
class _Problem:
    index: int
    record_id: str
    reason: str


class AuditLog:
    """The audit log in ``db``, signed by ``signer``. Safe to use from several threads and
    several processes on one database: appends serialise on the database's write lock."""

    def __init__(
        self,
        db: Database,
        signer: AuditSigner,
        *,
        origin: str = DEFAULT_ORIGIN,
        every_records: int = 100,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "\n" in origin or not origin:
            raise ConfigError("the audit log's origin must be one non-empty line")
        self._db = db
        self._signer = signer
        self._origin = origin
        self._every_records = max(1, every_records)
        self._every_s = every_s
        self._clock = clock
        # The tree as of this process's last committed checkpoint.
        self._tree = CompactRange()

    @property
    def signer(self) -> AuditSigner:
        return self._signer

    def append(self, kind: str, *, tenant: str = "", **data: Any) -> str:
        """Append one record and return its id; sign a checkpoint when due."""
        data_text = canonical_json(data)
        record_id = new_id("aud")
        with self._db.transaction():
            at = self._clock()
            seq = self._db.query("SELECT coalesce(max(seq) + 1, 0) FROM audit_log")[0][0]
            parsed = json.loads(data_text)
            leaf = leaf_hash(_leaf_bytes(seq, record_id, at, kind, tenant, parsed))
            self._db.execute(
                "INSERT INTO audit_log (seq, id, time, kind, tenant, data, leaf_hash, signature)"
                " VALUES (:seq, :id, :time, :kind, :tenant, :data, :leaf_hash, :signature)",
                {
                    "seq": seq,
                    "id": record_id,
                    "time": at,
                    "kind": kind,
                    "tenant": tenant,
                    "data": data_text,
                    "leaf_hash": leaf.hex(),
                    "signature": self._signer.sign_record(leaf),
                },
            )
            last = self._db.query(
                "SELECT tree_size, created_at FROM audit_checkpoints"
                " ORDER BY tree_size DESC LIMIT 1"
            )
            if last:
                since_size, since_time = int(last[0]["tree_size"]), float(last[0]["created_at"])
            else:
                first = self._db.query("SELECT time FROM audit_log WHERE seq = 0")
                since_size, since_time = 0, float(first[0]["time"])
            grown = None
            if seq + 1 - since_size >= self._every_records or at - since_time >= self._every_s:
                _, grown = self._write_checkpoint()
        if grown is not None:
            self._tree = grown
        return record_id

    def checkpoint(self) -> str:
        """Sign a checkpoint if the tree grew since the last one; return the latest note."""
        with self._db.transaction():
            note, grown = self._write_checkpoint()
        if grown is not None:
            self._tree = grown
        return note

    def _write_checkpoint(self) -> tuple[str, CompactRange | None]:
        """In a transaction: the latest note, after signing one at the current size if newer,
        and the tree it signed, for the caller to cache once the transaction commits."""
        size = self._db.query("SELECT coalesce(max(seq) + 1, 0) FROM audit_log")[0][0]
        last = self._db.query(
            "SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1"
        )
        if last and int(last[0]["tree_size"]) >= size:
            return str(last[0]["note"]), None
        # The tree over the leaves read so far: only those added since are read, unless its
        # last leaf is no longer there (a caller's transaction around an append rolled back).
        tree = self._tree.copy()
        if tree.size:
            last_leaf = self._db.query(
                "SELECT leaf_hash FROM audit_log WHERE seq = :seq", {"seq": tree.size - 1}
            )
            if not last_leaf or last_leaf[0]["leaf_hash"] != tree.last_leaf.hex():
                tree = CompactRange()
        for row in self._db.query(
            "SELECT seq, leaf_hash FROM audit_log WHERE seq >= :from ORDER BY seq",
            {"from": tree.size},
        ):
            if int(row["seq"]) != tree.size:
                raise RuntimeError(f"audit log has a gap at index {tree.size}")
            tree.append(bytes.fromhex(row["leaf_hash"]))
        root = tree.root()
        note = self._signer.sign_note(self._origin, size, root)
        self._db.execute(
            "INSERT INTO audit_checkpoints (tree_size, root_hash, note, created_at)"
            " VALUES (:size, :root, :note, :at)",
            {"size": size, "root": root.hex(), "note": note, "at": self._clock()},
        )
        return note, tree

    def latest_checkpoint(self) -> str | None:
        """The latest stored note, without signing a new one."""
        rows = self._db.query("SELECT note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1")
        return str(rows[0]["note"]) if rows else None

    def _rows(self, since: float | None = None) -> Iterator[Mapping[str, Any]]:
        """Every record in seq order, a page at a time."""
        after = -1
        while True:
            sql = f"SELECT {_COLUMNS} FROM audit_log WHERE seq > :after"
            params: dict[str, object] = {"after": after}
            if since is not None:
                sql += " AND time >= :since"
                params["since"] = since
            page = self._db.query(sql + f" ORDER BY seq LIMIT {_PAGE}", params)
            for row in page:
                yield dict(zip(row.keys(), row, strict=True))
            if len(page) < _PAGE:
                return
            after = int(page[-1]["seq"])

    def export(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """The records at or after ``since`` (a Unix time), oldest first, as stored."""
        for row in self._rows(since):
            yield _record(row)

    def prove(self, record_id: str) -> dict[str, Any]:
        """An inclusion proof of the record against the latest checkpoint (signed now if the
        record is newer than it). Raises KeyError for an unknown record."""
        rows = self._db.query(f"SELECT {_COLUMNS} FROM audit_log WHERE id = :id", {"id": record_id})
        if not rows:
            raise KeyError(record_id)
        record = _record(dict(zip(rows[0].keys(), rows[0], strict=True)))
        note = self.checkpoint()
        cp = parse_checkpoint(note, self._signer)
        hashes = [
            bytes.fromhex(r["leaf_hash"])
            for r in self._db.query(
                "SELECT leaf_hash FROM audit_log WHERE seq < :size ORDER BY seq",
                {"size": cp.tree_size},
            )
        ]
        return {
            "record": record,
            "index": record["seq"],
            "tree_size": cp.tree_size,
            "root_hash": cp.root.hex(),
            "leaf_hash": record["leaf_hash"],
            "proof": [h.hex() for h in inclusion_proof(hashes, record["seq"])],
            "checkpoint": note,
        }

    def verify(self, checkpoint: str | None = None) -> VerifyResult:
        """Recompute every leaf from its fields, check its signature, fold the tree, and check
        every stored checkpoint (and ``checkpoint``, a note published earlier) against it.

        The first bad record is the lowest index among: a gap in ``seq`` (a deleted record; its
        id is ``-``); a record whose fields do not hash to its ``leaf_hash`` or whose signature
        does not verify (edited, inserted or moved); the size of the log where a checkpoint
        covers more records than remain (truncated; ``-``); and, for a checkpoint whose
        signature fails or whose root differs from the recomputed one, the first index that no
        earlier good checkpoint vouches for.
        """
        problems: list[_Problem] = []
        notes: list[tuple[str, str, str | None]] = [  # (where, note, stored root hex)
            (f"stored checkpoint at size {r['tree_size']}", str(r["note"]), str(r["root_hash"]))
            for r in self._db.query(
                "SELECT tree_size, root_hash, note FROM audit_checkpoints ORDER BY tree_size"
            )
        ]
        if checkpoint is not None:
            notes.append(("the given checkpoint", checkpoint, None))
        parsed: list[tuple[str, Checkpoint | None, str | None]] = []
        for where, note, stored_root in notes:
            try:
                parsed.append((where, parse_checkpoint(note, self._signer), stored_root))
            except ValueError as exc:
                parsed.append((f"{where}: {exc}", None, stored_root))
        wanted = {cp.tree_size for _, cp, _ in parsed if cp is not None}
        roots: dict[int, bytes] = {0: CompactRange().root()}
        ids: dict[int, str] = {}

        tree = CompactRange()
        for row in self._rows():
            index = tree.size
            seq, record_id = int(row["seq"]), str(row["id"])
            if seq != index:
                problems.append(_Problem(index, "-", f"record {index} is missing (next is {seq})"))
                break
            if index == 0 or index in wanted:  # where a bad checkpoint's report may point
                ids[index] = record_id
            try:
                leaf = leaf_hash(
                    _leaf_bytes(
                        seq,
                        record_id,
                        float(row["time"]),
                        str(row["kind"]),
                        str(row["tenant"]),
                        json.loads(row["data"]),
                    )
                )
            except ValueError:
                problems.append(_Problem(index, record_id, "its data is not JSON"))
                break
            if leaf.hex() != row["leaf_hash"]:
                problems.append(_Problem(index, record_id, "its fields do not match its hash"))
                break
            if not self._signer.record_signature_ok(leaf, str(row["signature"])):
                problems.append(_Problem(index, record_id, "its signature does not verify"))
                break
            tree.append(leaf)
            if tree.size in wanted:
                roots[tree.size] = tree.root()
        # Checkpoints in size order: a bad one is pinned to the first index that the last good
        # one below it does not cover.
        vouched = 0
        for where, cp, stored_root in sorted(
            parsed, key=lambda p: p[1].tree_size if p[1] is not None else -1
        ):
            bad = ""
            if cp is None:
                bad = "it does not parse"
            elif not cp.signed:
                bad = "its signature does not verify with this log's key"
            elif cp.origin != self._origin:
                bad = f"its origin is {cp.origin!r}, not {self._origin!r}"
            elif stored_root is not None and stored_root != cp.root.hex():
                bad = "its stored root differs from its note"
            elif cp.tree_size > tree.size:
                # Truncated behind it, or cut short by a bad record reported at the same index.
                problems.append(_Problem(tree.size, "-", f"{where} covers {cp.tree_size} records"))
                continue
            elif roots[cp.tree_size] != cp.root:
                bad = "its root differs from the records' root"
            if bad:
                problems.append(_Problem(vouched, ids.get(vouched, "-"), f"{where}: {bad}"))
            elif cp is not None:
                vouched = max(vouched, cp.tree_size)
        root_hex = tree.root().hex()
        if not problems:
            return VerifyResult(True, None, None, "ok", tree.size, root_hex)
        first = min(problems, key=lambda p: p.index)
        return VerifyResult(False, first.index, first.record_id, first.reason, tree.size, root_hex)
