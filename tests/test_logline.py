"""The shape of a log line (dataplane/logline.py): every line, also the replication modules'
own wording, comes out as `time level natpair[unit] event key=value ...`, no root."""
import logging

import pytest

from dataplane.logline import LINE, KvFormatter, normalise


@pytest.mark.parametrize("msg,want", [
    ('fw-b-role STANDBY_READY/PEER_SILENT -> ACTIVE reason="hold expired"',
     'transition machine=fw-b-role from=STANDBY_READY event=PEER_SILENT to=ACTIVE reason="hold expired"'),
    ("t FAILED/MANUAL_ACTIVE refused reason=nope refused_total=3",
     "refused machine=t state=FAILED event=MANUAL_ACTIVE reason=nope refused_total=3"),
    ("takeover step=core_active states=6", "takeover step=core_active states=6"),
    ("fw-b-detect peer silent: no hello for 20 ms", 'log src=fw-b-detect msg="peer silent: no hello for 20 ms"'),
    ("pair link reset reason=peer_silent", 'pair msg="link reset" reason=peer_silent'),
])
def test_messages_become_event_and_fields(msg, want):
    assert normalise(msg) == want


def test_a_formatted_line_with_an_exception_is_one_parseable_line():
    rec = logging.LogRecord("natpair", logging.ERROR, __file__, 1, "error where=%s", ("feed",), None)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys
        rec.exc_info = sys.exc_info()
    line = KvFormatter("fw-a").format(rec)
    assert "\n" not in line and LINE.match(line), line
    assert LINE.match(line).group(3) == "error" and "exc=" in line
