"""RFC 6962 / RFC 9162 Merkle tree hashing: leaf and node hashes, tree roots, inclusion proofs.

Pure functions over bytes, no I/O: the audit log (:mod:`parley.trust.audit`) keeps its leaves in
the database and calls these to commit to them. :class:`CompactRange` folds leaves in one at a
time (O(log n) state) so that a root at every checkpoint size comes out of one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "CompactRange",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "tree_root",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_root(hashes: Sequence[bytes]) -> bytes:
    """MTH of the leaves whose hashes are ``hashes`` (the hash of nothing for an empty tree)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(tree_root(hashes[:k]), tree_root(hashes[k:]))


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 6962 section 2.1.1: the sibling hashes, leaf to root."""
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf {index} is not in a tree of size {len(hashes)}")
    proof: list[bytes] = []
    lo, hi = 0, len(hashes)
    # Walk down from the root, then reverse: RFC 6962 lists the deepest sibling first.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(tree_root(hashes[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(tree_root(hashes[lo : lo + k]))
            lo += k
    proof.reverse()
    return proof


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf ``leaf_hash`` at ``index`` in the tree of ``tree_size``
    leaves whose root is ``root`` (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


class CompactRange:
    """The roots of the perfect subtrees that make up a tree of ``size`` leaves, largest first;
    :meth:`append` adds a leaf hash, :meth:`root` is the tree's MTH."""

    __slots__ = ("_nodes", "last_leaf", "size")

    def __init__(self) -> None:
        self.size = 0
        self.last_leaf = b""
        self._nodes: list[tuple[int, bytes]] = []  # (leaves under it, hash)

    def append(self, leaf: bytes) -> None:
        self._nodes.append((1, leaf))
        self.size += 1
        self.last_leaf = leaf
        while len(self._nodes) >= 2 and self._nodes[-1][0] == self._nodes[-2][0]:
            (n, right), (_, left) = self._nodes.pop(), self._nodes.pop()
            self._nodes.append((2 * n, node_hash(left, right)))

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        r = self._nodes[-1][1]
        for _, h in reversed(self._nodes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> CompactRange:
        other = CompactRange()
        other.size = self.size
        other.last_leaf = self.last_leaf
        other._nodes = list(self._nodes)
        return other
