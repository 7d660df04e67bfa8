"""Mirror configuration: one frozen dataclass, documented defaults, self-validating.

Every option of :class:`~logstore.mirror.JetStreamMirror` (except the store and the topic) lives
here, as :class:`~logstore.config.LogConfig` holds every option of a log. Invalid values raise
:class:`~logstore.errors.ConfigError` when the config is built, before anything connects.
Durations are seconds. Needs nothing but the standard library (no nats-py).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any, List, Mapping, Optional, Sequence, Union

from ..errors import ConfigError

__all__ = ["MirrorConfig", "mirror_group", "default_stream"]

DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)

_SUBJECT_TOKEN = re.compile(r"^[^\s*>.]+$")
_STREAM_NAME = re.compile(r"^[^\s*>./\\]+$")
_DURATIONS = ("dedup_window_s", "ack_timeout_s", "backoff_initial_s", "max_backoff_s",
              "commit_interval_s", "connect_timeout_s", "api_timeout_s")


def mirror_group(stream: str) -> str:
    """The reserved consumer-group id holding a mirror's committed positions."""
    return f"__mirror__{stream}"


def default_stream(topic: str) -> str:
    """The stream a mirror of ``topic`` uses when none is given: ``logstore-<topic>``, with the
    topic's dots (not allowed in stream names) as underscores."""
    return f"logstore-{topic}".replace(".", "_")


@dataclass(frozen=True)
class MirrorConfig:
    """Settings of one :class:`~logstore.mirror.JetStreamMirror`. Every field has a default.

    servers:
        NATS URLs, e.g. the cluster's nodes: a list, a tuple or one string with commas. Stored
        as a tuple. Default ``("nats://127.0.0.1:4222",)``.
    stream:
        JetStream stream name (no spaces, ``.``, ``*``, ``>``, ``/``, ``\\``). None (default):
        ``logstore-<topic>`` (see :meth:`for_topic`). Created if missing (see ``create_stream``)
        with subjects ``<subject_prefix>.<topic>.>``, ``replicas`` copies, file storage and
        ``duplicate_window = dedup_window_s``.
    subject_prefix:
        Record ``o`` of partition ``p`` goes to subject ``<subject_prefix>.<topic>.<p>``: dot-
        separated tokens without spaces, ``*`` or ``>``. Default ``"logstore"``.
    replicas:
        Replicas of a stream the mirror creates, 1-5. None (default): 3 if the cluster has at
        least 3 nodes, else 1 (and 1 if the servers cannot host 3).
    group:
        Consumer group holding the committed positions. None (default): ``__mirror__<stream>``.
    max_in_flight:
        Publishes awaiting their JetStream ack at once (default 1000).
    dedup_window_s:
        ``duplicate_window`` of a stream the mirror creates (default 120). Must be longer than
        :attr:`retry_horizon_s`, else a retried publish could be stored twice.
    ack_timeout_s:
        A publish not acked by then counts as lost: reconnect and resync (default 5).
    backoff_initial_s / max_backoff_s:
        Reconnect backoff, doubling with jitter from the first up to the second (defaults 0.1
        and 5; ``max_backoff_s`` is raised to ``backoff_initial_s`` if lower).
    commit_interval_s:
        Commit positions at most this often while busy; always when idle or stopping
        (default 0.5).
    connect_timeout_s:
        Timeout of one connection attempt to one server (default 2).
    api_timeout_s:
        Timeout of JetStream API requests (stream info, last message...) (default 5).
    create_stream:
        Create the stream if it is missing (default True); False: a missing stream is a
        ``ConfigError``.
    nats_options:
        Extra keyword arguments for ``nats.connect`` (credentials, TLS...); they override the
        mirror's own connection settings.
    """

    servers: Union[str, Sequence[str]] = DEFAULT_SERVERS
    stream: Optional[str] = None
    subject_prefix: str = "logstore"
    replicas: Optional[int] = None
    group: Optional[str] = None
    max_in_flight: int = 1000
    dedup_window_s: float = 120.0
    ack_timeout_s: float = 5.0
    backoff_initial_s: float = 0.1
    max_backoff_s: float = 5.0
    commit_interval_s: float = 0.5
    connect_timeout_s: float = 2.0
    api_timeout_s: float = 5.0
    create_stream: bool = True
    # repr=False: connection options often hold credentials (user, password, token, nkeys).
    nats_options: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    def __post_init__(self) -> None:
        # Normalised in place (frozen: through object.__setattr__) so that every reader sees
        # one type per field: servers a tuple, durations floats, nats_options a private dict.
        self._set("servers", _check_servers(self.servers))
        if self.stream is not None and (not isinstance(self.stream, str)
                                        or not _STREAM_NAME.match(self.stream)):
            raise ConfigError(f"invalid stream name {self.stream!r}: no spaces, '.', '*', '>', "
                              f"'/'")
        prefix = self.subject_prefix
        if not isinstance(prefix, str) or not prefix or not all(
                _SUBJECT_TOKEN.match(t) for t in prefix.split(".")):
            raise ConfigError(f"invalid subject_prefix {prefix!r}: dot-separated tokens "
                              f"without spaces, '*' or '>'")
        if self.replicas is not None and (not _is_int(self.replicas)
                                          or not 1 <= self.replicas <= 5):
            raise ConfigError(f"replicas must be an int in [1, 5] or None (got "
                              f"{self.replicas!r})")
        if self.group is not None and (not isinstance(self.group, str) or not self.group
                                       or "\0" in self.group):
            raise ConfigError(f"invalid group {self.group!r}")
        if not _is_int(self.max_in_flight) or self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be an int >= 1 (got {self.max_in_flight!r})")
        for name in _DURATIONS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{name} must be a number > 0 (got {v!r})")
            self._set(name, float(v))
        self._set("max_backoff_s", max(self.max_backoff_s, self.backoff_initial_s))
        self._set("create_stream", bool(self.create_stream))
        self._set("nats_options", dict(self.nats_options or {}))
        self.check_dedup_window(self.dedup_window_s, "dedup_window_s")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ building
    @classmethod
    def option_names(cls) -> List[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_options(cls, base: Optional["MirrorConfig"] = None,
                     **options: Any) -> "MirrorConfig":
        """``base`` (default: all defaults) with ``options`` replaced. An unknown option name
        raises ``TypeError`` (as an unknown keyword argument does) listing the valid ones."""
        if base is not None and not isinstance(base, MirrorConfig):
            raise TypeError(f"config must be a MirrorConfig (got {type(base).__name__})")
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise TypeError(
                f"unknown mirror option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; valid options: "
                f"{', '.join(cls.option_names())}")
        if base is None:
            return cls(**options)
        return dataclasses.replace(base, **options) if options else base

    def for_topic(self, topic: str) -> "MirrorConfig":
        """This config with the defaults that depend on the topic filled in: ``stream``
        (``logstore-<topic>``) and ``group`` (``__mirror__<stream>``)."""
        stream = self.stream if self.stream is not None else default_stream(topic)
        group = self.group if self.group is not None else mirror_group(stream)
        if (stream, group) == (self.stream, self.group):
            return self
        return dataclasses.replace(self, stream=stream, group=group)

    # ------------------------------------------------------------------ derived values
    @property
    def retry_horizon_s(self) -> float:
        """Longest time between two publishes of one record while the mirror runs: an ack
        timeout, the wait for the rest of the window, and one backoff."""
        return 2 * self.ack_timeout_s + self.max_backoff_s

    def check_dedup_window(self, window_s: float, what: str) -> None:
        """Raise ``ConfigError`` unless a deduplication window of ``window_s`` seconds (``what``:
        where it comes from, for the message) outlasts :attr:`retry_horizon_s`."""
        if window_s <= self.retry_horizon_s:
            raise ConfigError(
                f"{what} ({window_s:g} s) must be longer than the mirror's retry horizon "
                f"({self.retry_horizon_s:g} s = 2 * ack_timeout_s + max_backoff_s): a retried "
                f"publish outside the window would be stored twice. Raise the window or lower "
                f"ack_timeout_s / max_backoff_s.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_servers(servers: Any) -> tuple:
    given = servers
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    try:
        servers = tuple(servers)
    except TypeError:
        raise ConfigError(f"servers must be one or more NATS URLs (got {given!r})") from None
    if not servers or not all(isinstance(s, str) for s in servers):
        raise ConfigError(f"servers must be one or more NATS URLs (got {given!r})")
    return servers

