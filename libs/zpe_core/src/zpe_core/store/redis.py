"""``redis://host:port/db`` (or ``rediss://``): a shared store on Redis.

Layout, all under one namespace (default ``zpe``; the ``{...}`` hash tag keeps
every key in one cluster slot so the Lua scripts may touch them together)::

    {zpe}:r:<key>    hash  v = value bytes, r = integer revision
    {zpe}:idx        zset  every record key, score 0 (lexicographic index)
    {zpe}:rev        int   global revision counter (INCR)
    {zpe}:b:<key>    string  blob bytes (artifacts)

Create, swap and delete are Lua scripts, so the record, its revision and the
index change atomically; so is a swap with the markers it writes (``_swap_and_mark``:
a claim with its lease marker, a commit with its done markers, one round trip each).
Revisions come from one ``INCR`` counter, so a key that is deleted and re-created never
repeats an old revision. ``_list`` is a ``ZRANGEBYLEX`` over the index.

URL query parameters (stripped before the URL reaches redis-py):

* ``namespace=NAME``: key prefix (default ``zpe``).
* ``retention=SECONDS``: artifacts (blobs) expire that long after they were
  last written; job and task records are kept. Unset: nothing expires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from zpe_core.errors import AlreadyExists, ConfigurationError, StoreConflict, StoreUnavailable
from zpe_core.store.base import JobStore

R = TypeVar("R")

DEFAULT_NAMESPACE = "zpe"

# KEYS: record, index, counter. ARGV: value, logical key. Returns the revision or -1.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local rev = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', rev)
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return rev
"""

# KEYS: record, counter. ARGV: value, expected revision. Returns the revision or -1.
_SWAP = """
local cur = redis.call('HGET', KEYS[1], 'r')
if (not cur) or cur ~= ARGV[2] then return -1 end
local rev = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', rev)
return rev
"""

# KEYS: record, counter, index, then the n markers to create, then those to delete.
# ARGV: value, expected revision, n, then the logical keys of KEYS[4..]. The swap and its
# markers in one atomic script: either all are written or (revision moved) none.
_SWAP_AND_MARK = """
local cur = redis.call('HGET', KEYS[1], 'r')
if (not cur) or cur ~= ARGV[2] then return -1 end
local rev = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', rev)
local n = tonumber(ARGV[3])
for i = 4, #KEYS do
  if i - 3 <= n then
    if redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('HSET', KEYS[i], 'v', '', 'r', redis.call('INCR', KEYS[2]))
      redis.call('ZADD', KEYS[3], 0, ARGV[i])
    end
  else
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[3], ARGV[i])
  end
end
return rev
"""

# KEYS: record, index. ARGV: logical key.
_DELETE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _redact(url: str) -> str:
    """The URL without credentials or query, safe for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RedisJobStore(JobStore):
    """Records as Redis hashes, compare-and-swap by Lua script."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        retention_seconds: int | None = None,
        display: str = "redis",
        secrets: tuple[str, ...] = (),
        **kwargs: int,
    ) -> None:
        """Wrap a redis-py client (``decode_responses`` must be off).

        ``display`` names the store in error messages; ``secrets`` are strings
        scrubbed from any message (e.g. the password).
        """
        super().__init__(**kwargs)
        if not namespace or any(c in namespace for c in "{}: "):
            raise ConfigurationError(f"invalid redis store namespace {namespace!r}")
        if retention_seconds is not None and retention_seconds <= 0:
            raise ConfigurationError("redis store retention must be a positive number of seconds")
        self.client = client
        self.namespace = namespace
        self.retention_seconds = retention_seconds
        self.display = display
        self._secrets = tuple(s for s in secrets if s)
        self._tag = "{" + namespace + "}"
        self._index = f"{self._tag}:idx"
        self._counter = f"{self._tag}:rev"
        self._create_script = client.register_script(_CREATE)
        self._swap_script = client.register_script(_SWAP)
        self._swap_and_mark_script = client.register_script(_SWAP_AND_MARK)
        self._delete_script = client.register_script(_DELETE)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisJobStore:
        """Open ``redis://[:password@]host:port/db[?namespace=..&retention=..]``.

        Keyword arguments (``namespace``, ``retention_seconds``,
        ``max_artifact_bytes``) override the URL's query parameters.
        """
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        namespace = query.pop("namespace", DEFAULT_NAMESPACE)
        retention_raw = query.pop("retention", None)
        try:
            retention = int(retention_raw) if retention_raw else None
        except ValueError:
            raise ConfigurationError(
                f"redis store retention must be an integer number of seconds, got {retention_raw!r}"
            ) from None
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("retention_seconds", retention)
        try:
            client = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=5,
                socket_timeout=10,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                health_check_interval=30,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid redis store URL {_redact(url)}: {exc}") from None
        return cls(
            client,
            display=f"redis store {_redact(url)}",
            secrets=tuple(s for s in (parts.password, parts.username) if s),
            **kwargs,
        )

    # ------------------------------------------------------------------ plumbing

    def _record(self, key: str) -> str:
        return f"{self._tag}:r:{key}"

    def _blob(self, key: str) -> str:
        return f"{self._tag}:b:{key}"

    def _call(self, what: str, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except RedisError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            for secret in self._secrets:
                reason = reason.replace(secret, "***")
            raise StoreUnavailable(f"{self.display} unavailable during {what}: {reason}") from None

    # ------------------------------------------------------------------ primitives

    def _create(self, key: str, value: bytes) -> int:
        rev = int(
            self._call(
                "create",
                lambda: self._create_script(
                    keys=[self._record(key), self._index, self._counter], args=[value, key]
                ),
            )
        )
        if rev < 0:
            raise AlreadyExists(key)
        return rev

    def _create_many(self, items: Sequence[tuple[str, bytes]]) -> list[int | None]:
        """Every create in one pipeline (one round trip; each script atomic on its own)."""
        if not items:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            self._create_script(
                keys=[self._record(key), self._index, self._counter], args=[value, key], client=pipe
            )
        revisions = self._call("create", pipe.execute)
        return [None if int(rev) < 0 else int(rev) for rev in revisions]

    def _read(self, key: str) -> tuple[bytes, int] | None:
        value, rev = self._call("read", lambda: self.client.hmget(self._record(key), "v", "r"))
        if value is None or rev is None:
            return None
        return _as_bytes(value), int(rev)

    def _revision(self, key: str) -> int | None:
        rev = self._call("read", lambda: self.client.hget(self._record(key), "r"))
        return None if rev is None else int(rev)

    def _count(self, prefix: str) -> int:
        low, high = b"[" + prefix.encode(), b"(" + prefix.encode() + b"\xff"
        return int(self._call("count", lambda: self.client.zlexcount(self._index, low, high)))

    def _swap(self, key: str, value: bytes, expected_rev: int) -> int:
        rev = int(
            self._call(
                "swap",
                lambda: self._swap_script(
                    keys=[self._record(key), self._counter], args=[value, str(expected_rev)]
                ),
            )
        )
        if rev < 0:
            raise StoreConflict(key)
        return rev

    def _swap_and_mark(
        self,
        key: str,
        value: bytes,
        expected_rev: int,
        *,
        create: Sequence[str] = (),
        delete: Sequence[str] = (),
    ) -> int:
        """The swap and its markers in one atomic script (one round trip)."""
        markers = [*create, *delete]
        keys = [self._record(key), self._counter, self._index, *map(self._record, markers)]
        args: list[bytes | str] = [value, str(expected_rev), str(len(create)), *markers]
        rev = int(self._call("swap", lambda: self._swap_and_mark_script(keys=keys, args=args)))
        if rev < 0:
            raise StoreConflict(key)
        return rev

    def _delete(self, key: str) -> None:
        self._call(
            "delete",
            lambda: self._delete_script(keys=[self._record(key), self._index], args=[key]),
        )

    def _list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[str]:
        if limit <= 0:
            return []
        if start_after is not None and start_after >= prefix:
            low = b"(" + start_after.encode()
        else:
            low = b"[" + prefix.encode()
        # Keys are ASCII, so every key with the prefix sorts below prefix + 0xff.
        high = b"(" + prefix.encode() + b"\xff" if prefix else b"+"
        found = self._call(
            "list",
            lambda: self.client.zrangebylex(self._index, low, high, start=0, num=limit),
        )
        return [k.decode() if isinstance(k, bytes) else str(k) for k in found]

    def _put_blob(self, key: str, data: bytes) -> None:
        self._call(
            "blob write",
            lambda: self.client.set(self._blob(key), data, ex=self.retention_seconds),
        )

    def _get_blob(self, key: str) -> bytes | None:
        data = self._call("blob read", lambda: self.client.get(self._blob(key)))
        return None if data is None else _as_bytes(data)

    def ping(self) -> None:
        self._call("ping", self.client.ping)

    def close(self) -> None:
        self.client.close()
