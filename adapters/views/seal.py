"""Mail content in view rows, sealed with its owner's view key (SPEC L2: never plaintext in views).

The projections stay pure and write plaintext rows; the view stores seal them on the way in and
open them on the way out, here. Content is what L2 names: a thread row's subject (`timeline`,
`mailbox`), a message row's subject, body, attachment names and refusal reasons (`message`), and
a mailbox's last sync error (`sync_status`), which may quote a refused attachment's name.
Sizes, content types, ids and addresses stay readable: queries and checksums need them.

A sealed row keeps its shape with the content taken out (subject and body gone, attachment names
and reasons null) and `"sealed": [owner, box]`, box = base64 of AES-SIV over the content's JSON
with the row's place as associated data (tenant, owner and thread for a thread's subject, which its
timeline and mailbox rows share; tenant, owner and row key for the rest). AES-SIV is
deterministic: the same row sealed twice gives the same bytes, so rebuilt views equal incremental
ones byte for byte (E3); checksums cover the opened content (`canonical`), so stores with other
keys (and the in-memory one) compare too. Binding the place means equal
subjects of different threads do not show as equal boxes. The view key is derived from the user's
data key (adapters.eventstore.content_keys), so DeleteUser's destruction of that key erases the
views too: a box whose key is gone opens as erased content (`"subject": null, "erased": true`),
exactly as the projections answer content erased in the log.

Message rows name their owner in `_owner` (projections.rows): the store moves it into the seal,
so it never reaches an answer; stores without keys (in memory, replays) just drop it.
"""

from __future__ import annotations

import base64
from binascii import b2a_base64
from collections.abc import Callable, Hashable, Iterable
from hashlib import blake2b
from sys import getsizeof, intern
from typing import Any, ClassVar, Generic, TypeVar, cast

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from adapters.errors import StoreError
from adapters.eventstore.content_keys import ContentKeys
from projections.history import BASES
from projections.ports import Changes, encode_doc
from projections.rows import OWNER_FIELD, Doc, Rows

SEALED_PROJECTIONS = frozenset({"timeline", "mailbox", "message", "sync_status"})
SEALED_FIELD = "sealed"
# bytes each memo of a sealer may hold (boxes to reuse, contents opened): a budget in bytes, not
# entries, so long bodies cannot make it large (docs/decisions/operations-and-scale.md)
MEMO_BUDGET = 4 << 20
_ENTRY = 160  # what an entry costs beside its value: digest, object headers, its dict slot
_MARK = b'"sealed":'  # in the stored bytes of a sealed row
# the text each sealed projection holds; a sync status's last error may quote an attachment's
# name (S8 refusals), so it is sealed with the mailbox user's key too
_TEXT = {"timeline": "subject", "mailbox": "subject", "message": "subject",
         "sync_status": "last_error"}

# a batch's view keys by (tenant, owner, create): a key, None (destroyed) or _PLAIN
_BatchKeys = dict[tuple[str, str, bool], object]
_UNSEEN, _PLAIN = object(), object()


class _Batch:
    """What the rows of one `encoded` call share: their owners' keys (most rows of a batch
    share a few owners) and the boxes sealed for them, by place and content (a history version
    repeats the rows of its key, a build writes a message's live row beside its version).
    Held only while the batch is encoded: no larger than the batch's own stored bytes, which
    hold a copy of each box."""

    __slots__ = ("boxes", "keys")

    def __init__(self) -> None:
        self.keys: _BatchKeys = {}
        self.boxes: dict[tuple[Any, ...], str] = {}


def _encrypt(siv: AESSIV, plain: bytes, place: bytes) -> str:
    return b2a_base64(siv.encrypt(plain, [place]), newline=False).decode()


def _nameless(att: dict[str, Any]) -> dict[str, Any]:
    """An attachment as a sealed row keeps it: its name (and refusal reason) taken out."""
    att = att.copy()
    att["name"] = None
    if "reason" in att:
        att["reason"] = None
    return att


def _unmarked(doc: Doc) -> Doc:
    """A copy of the row without its owner mark."""
    doc = doc.copy()
    doc.pop(OWNER_FIELD, None)
    return doc


def _stripped(doc: Doc) -> Doc:
    """The row without its owner mark (a copy only when it has one)."""
    return _unmarked(doc) if OWNER_FIELD in doc else doc


def _texts(parts: tuple[Any, ...]) -> bool:
    """Whether each part is text or None: then equal memo keys mean equal sealed bytes
    (equality of other values may hold across types, 1 == 1.0 == True, which JSON tells apart;
    rows hold text there, anything else is sealed without the memo)."""
    return all(part is None or part.__class__ is str for part in parts)


def _copy(doc: Doc) -> Doc:
    """A row copied deep enough for `_erased` to change it, without its owner mark."""
    doc = _unmarked(doc)
    if "attachments" in doc:
        doc["attachments"] = [dict(a) for a in doc["attachments"]]
    return doc


def _erased(projection: str, doc: Doc) -> Doc:
    """The row as the projections write erased content (rows._subject, rows._content)."""
    if projection == "sync_status":
        doc["last_error"] = None
        return doc
    doc["subject"] = None
    doc["erased"] = True
    if projection == "message":
        doc["body"] = None
        for att in doc.get("attachments", ()):
            att["name"] = None
            if "reason" in att:
                att["reason"] = None
    return doc


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V", str, bytes)


def _digest(data: bytes) -> bytes:
    """A fixed-size key for a memo: 128 bits, so distinct contents do not meet in practice."""
    return blake2b(data, digest_size=16).digest()


def _held(key: tuple[Any, ...]) -> int:
    """What a box memo's key holds beyond `_ENTRY`: the tuple and its parts from the fourth on
    (the first three, kind, tenant and owner, are interned by `_lasting`: one string each for
    all keys), a message's attachment names and reasons (its seventh and eighth) too; counted
    whole even when shared with rows, so the budget is not under-counted."""
    size = getsizeof(key) + sum(map(getsizeof, key[3:]))
    for part in key[6:]:
        size += sum(map(getsizeof, part))
    return size


def _lasting(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key as the memo keeps it: kind, tenant and owner interned (the rows' copies are
    new strings per event), which `_held` counts once for all keys."""
    return (intern(key[0]), intern(key[1]), intern(key[2]), *key[3:])


def _digest_size(key: object) -> int:
    return 0  # a digest key is part of `_ENTRY`


class _Memo(Generic[_K, _V]):
    """Values by key, within `budget` bytes (values, what `key_bytes` says a key holds, plus
    `_ENTRY` each): two generations of half the budget each; when the newer one is full it
    becomes the older and the former older one is dropped, and a value found in the older one
    moves to the newer one. So what was used recently stays (a thread's rows are rewritten at
    each of its events), without the order bookkeeping of an LRU on every hit."""

    __slots__ = ("_half", "_key_bytes", "_new", "_old", "_size")

    def __init__(self, budget: int, key_bytes: Callable[[_K], int] = _digest_size) -> None:
        self._half = budget // 2
        self._key_bytes = key_bytes
        self._new: dict[_K, _V] = {}
        self._old: dict[_K, _V] = {}
        self._size = 0  # of `_new`

    def get(self, key: _K) -> _V | None:
        return self._new.get(key) or self.older(key)  # values are never empty

    def older(self, key: _K) -> _V | None:
        """A value of the older generation, moved to the newer one."""
        value = self._old.pop(key, None)
        if value is not None:
            self.put(key, value)
        return value

    def put(self, key: _K, value: _V) -> None:
        size = len(value) + _ENTRY + self._key_bytes(key)
        if size > self._half:  # larger than a generation: not kept (the budget holds)
            return
        if self._size + size > self._half:
            self._old, self._new, self._size = self._new, {}, 0
        self._new[key] = value
        self._size += size

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def held(self) -> int:
        """The bytes held, as the budget counts them."""
        return sum(len(v) + _ENTRY + self._key_bytes(k)
                   for d in (self._new, self._old) for k, v in d.items())


class ViewSealer:
    """Seals and opens the content of view rows; `keys` None: a store that keeps nothing (in
    memory), whose rows are only stripped of `_owner`. Keys are opened on first use."""

    # benchmarks.content_cost only: False writes plaintext rows (the baseline it measures)
    enabled: ClassVar[bool] = True

    def __init__(self, keys: Callable[[], ContentKeys] | None,
                 deleted: Callable[[str, str], bool] | None = None,
                 memo_budget: int = MEMO_BUDGET) -> None:
        self._factory = keys
        # (tenant, user) -> deleted now: a store that keeps plaintext (in memory) erases a
        # deleted user's content from its history when reading it (L2), as destroyed keys do
        self._deleted = deleted
        self._keys: ContentKeys | None = None
        # (place, content) -> box: a thread's rows are rewritten at each of its events with the
        # same subject, a message's at each flag or label change with the same content, and
        # each history version repeats them; sealing is deterministic, so the box is reused.
        # Keyed by the place and content themselves: a dict finds them by Python's hash and
        # compares them exactly, so no digest is computed per row and no collision can hand a
        # box to other content. The content a key holds counts in the budget (issue #15)
        self._boxes: _Memo[tuple[Any, ...], str] = _Memo(memo_budget, _held)
        # digest of (place, box) -> content, for reads (in this process's memory only, never
        # stored; used only after the owner's key was found not destroyed)
        self._opened: _Memo[bytes, bytes] = _Memo(memo_budget)

    @property
    def sealing(self) -> bool:
        return self._factory is not None and ViewSealer.enabled

    def keys(self) -> ContentKeys:
        if self._keys is None:
            assert self._factory is not None
            self._keys = self._factory()
        return self._keys

    def memo_bytes(self) -> int:
        """What its memos hold now, in bytes as their budget counts them (each <= the budget)."""
        return self._boxes.held() + self._opened.held()

    def close(self) -> None:
        if self._keys is not None:
            self._keys.close()
            self._keys = None

    def encoded(self, changes: Changes) -> dict[str, list[tuple[str, str, str, bytes]]]:
        """Each projection's changed rows as (tenant, key, row key, sealed stored bytes), done
        before the store's write transaction: no key work while it holds its locks (a key
        created on the way takes another connection to the same database). The batch's keys
        are looked up once per owner (most rows of a batch share a few owners)."""
        batch = _Batch()
        return {projection: self._encoded(projection, keyed, batch)
                for projection, keyed in changes.items()}

    def _encoded(self, projection: str, keyed: dict[tuple[str, str], Rows], batch: _Batch
                 ) -> list[tuple[str, str, str, bytes]]:
        """One projection's rows, what it needs decided once for all of them (hot: a rebuild
        writes every row and version through here). `dumps` with sorted keys is `encode_doc`,
        called directly."""
        dumps, sort = orjson.dumps, orjson.OPT_SORT_KEYS
        base = BASES.get(projection)
        kind = base if base is not None else projection  # how its rows are sealed
        if kind not in SEALED_PROJECTIONS or (base is not None and self._factory is None):
            # nothing to seal (plaintext history: owners kept, for erasure when read)
            return [(t, k, rk, dumps(doc, option=sort))
                    for (t, k), rows in keyed.items() for rk, doc in rows.items()]
        if not self.sealing:  # rows only stripped of their owner mark
            strip = _stripped
            if base is None:
                return [(t, k, rk, dumps(strip(doc), option=sort))
                        for (t, k), rows in keyed.items() for rk, doc in rows.items()]
            return [(t, k, rk, dumps({r: strip(d) for r, d in doc.items()}, option=sort))
                    for (t, k), rows in keyed.items() for rk, doc in rows.items()]
        seal = self._seal
        if base is None:
            return [(t, k, rk, dumps(seal(kind, t, k, doc, batch), option=sort))
                    for (t, k), rows in keyed.items() for rk, doc in rows.items()]
        return [(t, k, rk, dumps({r: seal(kind, t, k, d, batch) for r, d in doc.items()},
                                 option=sort))
                for (t, k), rows in keyed.items() for rk, doc in rows.items()]

    def sealed(self, projection: str, tenant: str, key: str, row_key: str, doc: Doc) -> bytes:
        """The stored bytes of one row; a history's row (a version: the key's rows at a time)
        has each of its rows sealed as its projection seals them."""
        return self._encoded(projection, {(tenant, key): {row_key: doc}}, _Batch())[0][3]

    def opened(self, projection: str, tenant: str, key: str, raw: bytes) -> Rows:
        """A history version's rows, opened (`projection` is the history's projection)."""
        rows = {rk: self.open(projection, tenant, key, rk, d)
                for rk, d in orjson.loads(raw).items()}
        if self._factory is not None or projection not in SEALED_PROJECTIONS:
            return rows
        for rk, doc in rows.items():
            owner = doc.pop(OWNER_FIELD, doc.get("user" if projection == "sync_status"
                                                  else "owner"))
            if isinstance(owner, str) and isinstance(doc.get(_TEXT[projection]), str) \
                    and self._deleted is not None and self._deleted(tenant, owner):
                rows[rk] = _erased(projection, doc)
        return rows

    def seal(self, projection: str, tenant: str, key: str, row_key: str, doc: Doc) -> Doc:
        """The row as stored: content sealed (a copy; rows are shared), `_owner` gone."""
        if projection not in SEALED_PROJECTIONS:
            return doc
        if not self.sealing:
            return _stripped(doc)
        return self._seal(projection, tenant, key, doc, _Batch())

    def _seal(self, projection: str, tenant: str, key: str, doc: Doc, batch: _Batch) -> Doc:
        """`seal` of a sealing store, within `batch`."""
        marked = OWNER_FIELD in doc
        status = projection == "sync_status"
        owner = doc[OWNER_FIELD] if marked else doc.get("user" if status else "owner")
        text = _TEXT[projection]
        value = doc.get(text)
        if not isinstance(value, str) or not isinstance(owner, str):
            return _unmarked(doc) if marked else doc  # erased already, or not a content row
        # a sync status's error is content only for a user whose content the log holds (sealed
        # there under a key created then); one without a key (PostgreSQL without a master key
        # refuses content) is kept as it is rather than fail the projection
        keys = batch.keys
        found = keys.get((tenant, owner, not status), _UNSEEN)
        if found is _UNSEEN:
            found = keys[(tenant, owner, not status)] = self._view_key(tenant, owner, not status)
        if found is _PLAIN:
            return _unmarked(doc) if marked else doc
        if found is None:  # the owner's key is destroyed: the content is erased (L2)
            return _erased(projection, _copy(doc))
        sealed = doc.copy()  # rows are shared; attachments copied below
        if marked:
            del sealed[OWNER_FIELD]
        del sealed[text]
        # what the box is reused for: its place (the first four: what `_place` binds) and
        # content, as the memo's key
        memo: tuple[Any, ...]
        if projection == "message":
            body = sealed.pop("body", None)
            atts = doc.get("attachments")
            if atts:
                names = tuple([a.get("name") for a in atts])
                reasons = tuple([a.get("reason") for a in atts])
                sealed["attachments"] = [_nameless(a) for a in atts]
                memo = (projection, tenant, owner, key, value, body, names, reasons)
                exact = _texts((body, *names, *reasons))
            else:
                memo = (projection, tenant, owner, key, value, body)
                exact = body is None or body.__class__ is str
        elif status:
            memo = (projection, tenant, owner, key, value)
            exact = True
        else:  # one box for the thread's timeline and mailbox rows
            thread = doc.get("thread")
            memo = ("thread", tenant, owner, thread, value)
            exact = thread is None or thread.__class__ is str
        # tenant, key and owner are text (the store's keys, checked above); a subclass of str
        # could compare equal to other text, so `exact` asks for str itself
        exact = exact and value.__class__ is str and owner.__class__ is str \
            and tenant.__class__ is str and key.__class__ is str
        if not exact:
            sealed[SEALED_FIELD] = [owner, self._box(found, memo, False)]
            return sealed
        box = batch.boxes.get(memo)
        if box is None:
            # a message's rows never change (flags live in its thread's rows): its live row and
            # history version are written in one batch, so only the batch reuses its box and
            # the memo keeps its budget for what is rewritten across batches (threads' subjects)
            lasting = projection != "message"
            box = batch.boxes[memo] = (lasting and self._boxes.get(memo)) \
                or self._box(found, memo, lasting)
        sealed[SEALED_FIELD] = [owner, box]
        return sealed

    def _view_key(self, tenant: str, owner: str, create: bool) -> object:
        """The owner's view key; None: destroyed (erase); _PLAIN: none, and none is made."""
        keys = self.keys()
        siv = keys.view_key(tenant, owner, create=create)
        if siv is None and not create and not keys.destroyed(tenant, owner):
            return _PLAIN
        return siv

    def _box(self, siv: object, memo: tuple[Any, ...], keep: bool) -> str:
        """The box of the content `memo[4:]` at the place `memo[:4]`, kept for reuse when
        `keep` (the memo compares exactly)."""
        content: dict[str, Any] = {_TEXT.get(memo[0], "subject"): memo[4]}
        if memo[0] == "message":
            content["body"] = memo[5]
            attached = len(memo) > 6
            content["names"] = list(memo[6]) if attached else []
            content["reasons"] = list(memo[7]) if attached else []
        box = _encrypt(cast(AESSIV, siv), orjson.dumps(content), orjson.dumps(memo[:4]))
        if keep:
            self._boxes.put(_lasting(memo), box)
        return box

    def canonical(self, projection: str, tenant: str, key: str, row_key: str, raw: bytes
                  ) -> bytes:
        """The stored bytes with sealed content opened (what checksums cover, so stores with
        different keys compare); bytes that do not open are returned as stored, so `verify`
        reports the difference instead of failing."""
        base = BASES.get(projection)
        if base is not None:  # opened, or in plaintext stores erased and without owners
            try:
                return encode_doc(self.opened(base, tenant, key, raw))
            except (StoreError, ValueError, TypeError, KeyError):
                return raw
        if self._factory is None or projection not in SEALED_PROJECTIONS \
                or _MARK not in raw:
            return raw
        try:
            return encode_doc(self.open(projection, tenant, key, row_key, orjson.loads(raw)))
        except (StoreError, ValueError, TypeError, KeyError):
            return raw

    def refresh(self, projection: str | None = None, docs: Iterable[bytes] = ()) -> None:
        """Notice keys destroyed by other processes: once per read that found a sealed row
        (`projection` and the stored `docs`), or unconditionally (no projection)."""
        if self._keys is None:
            return
        if projection is not None and (BASES.get(projection, projection) not in
                                       SEALED_PROJECTIONS or not any(
                _MARK in (doc if isinstance(doc, bytes) else str(doc).encode()) for doc in docs)):
            return
        self._keys.refresh()

    def open(self, projection: str, tenant: str, key: str, row_key: str, doc: Doc) -> Doc:
        sealed = doc.pop(SEALED_FIELD, None) if projection in SEALED_PROJECTIONS else None
        if sealed is None:
            return doc
        owner, box = sealed
        siv = self.keys().view_key(tenant, owner, create=False)
        if siv is None:
            return _erased(projection, doc)
        place = _place(projection, tenant, key, owner, doc)
        # the whole box is in the digest, not only its SIV tag: an altered box must not open
        digest = _digest(place + b"\0" + box.encode())
        plain = self._opened.get(digest)  # checked above: the key is not destroyed
        if plain is None:
            try:
                plain = siv.decrypt(base64.b64decode(box), [place])
            except InvalidTag:
                raise StoreError(f"sealed {projection} row {key!r} of {tenant}/{owner} does not "
                                 "open (altered, or moved from another row)") from None
            self._opened.put(digest, plain)
        content = orjson.loads(plain)
        text = _TEXT[projection]
        doc[text] = content[text]
        if projection == "message":
            doc["body"] = content["body"]
            for att, name, reason in zip(doc.get("attachments", ()), content["names"],
                                         content["reasons"], strict=True):
                att["name"] = name
                if "reason" in att:
                    att["reason"] = reason
        return doc


def _place(projection: str, tenant: str, key: str, owner: str, doc: Doc) -> bytes:
    """What a box is bound to: a thread's subject to the thread (its timeline and mailbox rows
    hold the same subject, so one box serves them), other content to its row's key."""
    if projection in ("timeline", "mailbox"):
        return orjson.dumps(["thread", tenant, owner, doc.get("thread")])
    return orjson.dumps([projection, tenant, owner, key])
