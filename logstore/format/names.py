"""Every on-disk name of logstore, in one place (Kafka's ``LogFileUtils``).

A log directory holds segment files named by their base offset (20 digits) with three
suffixes, its metadata, a lock file and the markers of interrupted operations; a store root
holds topics, internal logs and group directories. The engine, the views and the diagnostics
all build and recognise these names through this module, so that a name is defined once.
See ``segments/FORMAT.md``, "Directory" and "Store layout".
"""

from __future__ import annotations

import os
from typing import Optional

from ..fs import TMP_SUFFIX

# ----------------------------------------------------------------------------- a log directory
LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
KEYINDEX_SUFFIX = ".keyindex"  # a sealed segment's key index (a hint, written on first use)
SEGMENT_SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX)
NAME_DIGITS = 20

META_NAME = "logstore.meta"  # JSON metadata, written once at creation (and on a settings change)
CLEAN_SHUTDOWN_NAME = "clean-shutdown"  # present only between a clean close and the next open
LOCK_NAME = ".lock"  # flock()ed by the writer (LOCK_SH by each writer of a shared log)
WRITE_LOCK_NAME = ".wlock"  # shared logs: the write lock, and the shared tail in its first page
SYNC_LOCK_NAME = ".slock"  # shared logs: held around an fsync of the tail
CLEAN_LOCK_NAME = ".clock"  # shared logs: one retention/compaction pass at a time
WRITERS_NAME = ".writers"  # shared logs: LOCK_SH by each writer (the first and last tell)
CREATION_LOCK_NAME = ".tlock"  # shared stores: creating a topic or a queue, one process at a time
DEDUP_LOCK_NAME = ".dlock"  # shared stores, in a topic's directory: publishing with a msg_id
REDRIVE_LOCK_NAME = ".rlock"  # shared stores, in a queue's event log directory: redriving
LOCK_FILES = (LOCK_NAME, WRITE_LOCK_NAME, SYNC_LOCK_NAME, CLEAN_LOCK_NAME, WRITERS_NAME)

TMP = TMP_SUFFIX  # an interrupted atomic write (tmp + fsync + rename)
DELETED = ".deleted"  # retention: renamed first, unlinked after the directory fsync
CLEANED = ".cleaned"  # compaction: a cleaned segment being written
SWAP = ".swap"  # compaction: a cleaned segment ready to replace its original
COMPACTION_COMMIT = "compaction.commit"  # compaction's commit point: the .swap files win
LEFTOVER_SUFFIXES = (TMP, CLEANED, SWAP, DELETED)

# ----------------------------------------------------------------------------- a store root
STORE_META = "store.meta"
TOPICS_DIR = "topics"
TOPIC_META = "topic.json"
INTERNAL_DIR = "internal"
OFFSETS_LOG = os.path.join(INTERNAL_DIR, "offsets")  # the store's own cursors (compacted)
QUEUES_DIR = os.path.join(INTERNAL_DIR, "queues")  # one work-queue event log per queue
GROUPS_DIR = os.path.join(INTERNAL_DIR, "groups")  # <topic>/<group>/: group.json, members/, <p>/
GROUP_META = "group.json"
MEMBERS_DIR = "members"

# Internal group names the store keeps in the offsets log (never valid user names: they start
# with "_", which validate_name refuses).
QUEUE_GROUP = "__queue__"  # a work queue's checkpoint (key: queue name)
REDRIVE_GROUP = "__redrive__"  # a dead-letter topic's redrive cursor
QUEUE_EVENTS_TOPIC = "__events__"  # the "topic" of a queue's checkpoint position


def segment_name(base_offset: int, suffix: str = LOG_SUFFIX) -> str:
    """``00000000000000004711.log`` (or another suffix) for a segment's base offset."""
    return f"{base_offset:0{NAME_DIGITS}d}{suffix}"


def parse_segment_name(name: str) -> Optional[int]:
    """Base offset of a ``NNNN....log`` file name, or None for any other name."""
    stem, dot, ext = name.partition(".")
    if dot and "." + ext == LOG_SUFFIX and len(stem) == NAME_DIGITS and stem.isdigit():
        return int(stem)
    return None



def topic_dir(root: str, topic: str) -> str:
    """Directory of a topic in a store."""
    return os.path.join(root, TOPICS_DIR, topic)


def partition_dir(root: str, topic: str, partition: int) -> str:
    """Log directory of one partition of a topic."""
    return os.path.join(root, TOPICS_DIR, topic, str(partition))


def queue_events_dir(root: str, queue: str) -> str:
    """Log directory of a work queue's event log."""
    return os.path.join(root, QUEUES_DIR, queue)
