"""Issue 16, case 9: appends buffered by ``write_buffer_bytes`` are written at a normal
interpreter exit without ``close()``, as a file object's buffer is (atexit / weakref.finalize).
On main 8f4b83a a script that appends 10 records and ends leaves ``end_offset`` 0.
"""

import logstore
from edge_helpers import ROOT, run_python

_LOG_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[2])
import logstore
log = logstore.Log.open(sys.argv[1], fsync="never", write_buffer_bytes=65536)
for i in range(10):
    log.append(b"record-%d" % i)
# no close(): the script just ends
"""

_LOG_SCRIPT_DROPPED = r"""
import sys
sys.path.insert(0, sys.argv[2])
import logstore
def work():
    log = logstore.Log.open(sys.argv[1], fsync="every", fsync_records=1000,
                            write_buffer_bytes=65536)
    for i in range(10):
        log.append(b"record-%d" % i)
work()   # the Log object is dropped here, never closed
import gc; gc.collect()
"""

_STORE_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[2])
import logstore
store = logstore.Store.open(sys.argv[1], fsync="never", write_buffer_bytes=65536,
                            retention_check_interval_s=0)
t = store.topic("t")
for i in range(10):
    t.publish(b"record-%d" % i)
"""


def _values(log):
    return [r.value for r in log.replay()]


def test_buffered_appends_written_at_interpreter_exit(tmp_path):
    d = str(tmp_path / "log")
    r = run_python(_LOG_SCRIPT, d, ROOT)
    assert r.returncode == 0, r.stderr
    with logstore.Log.open(d, readonly=True) as log:
        assert log.end_offset == 10
        assert _values(log) == [b"record-%d" % i for i in range(10)]


def test_buffered_appends_written_when_the_log_is_dropped(tmp_path):
    d = str(tmp_path / "log")
    r = run_python(_LOG_SCRIPT_DROPPED, d, ROOT)
    assert r.returncode == 0, r.stderr
    with logstore.Log.open(d, readonly=True) as log:
        assert _values(log) == [b"record-%d" % i for i in range(10)]


def test_buffered_publishes_written_at_interpreter_exit(tmp_path):
    d = str(tmp_path / "store")
    r = run_python(_STORE_SCRIPT, d, ROOT)
    assert r.returncode == 0, r.stderr
    with logstore.Store.open(d, readonly=True) as s:
        assert _values(s.topic("t").partitions[0]) == [b"record-%d" % i for i in range(10)]
