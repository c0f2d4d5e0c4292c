"""Console rendering: pure line formatting and the ANSI redraw of a live block."""

from __future__ import annotations

import io
import logging

from nodeagent import console
from nodeagent.prewarm import display
from nodeagent.prewarm.diskguard import FsStatus
from nodeagent.prewarm.state import ImageState

MiB = 1 << 20


def test_formatting_helpers():
    assert console.fmt_bytes(512) == "512 B"
    assert console.fmt_bytes(1.5 * 2**30) == "1.5 GiB"
    assert console.fmt_duration(65) == "1m05s" and console.fmt_duration(None) == "--"
    assert console.bar(0.5, 10) == "[#####.....]"
    assert console.bar(None, 5) == "[  ?  ]"


def test_render_shows_bar_bytes_rate_eta_and_overall_line():
    states = [
        ImageState("reg/a:1", "pulling", bytes_done=50 * MiB, bytes_total=100 * MiB,
                   rate_bps=10 * MiB, eta_s=5, phase="downloading", attempts=1),
        ImageState("reg/b:1", "present", pinned=True, started_at=0, finished_at=12),
        ImageState("reg/c:1", "failed", message="auth: refused"),
    ]
    fs = FsStatus("/x", 1000 * MiB, 400 * MiB)
    lines = display.render(states, fs, width=200)
    assert len(lines) == 4
    assert "reg/a:1" in lines[0] and "#" in lines[0] and "50.0 MiB/100.0 MiB" in lines[0]
    assert "10.0 MiB/s" in lines[0] and "ETA 5s" in lines[0]
    assert "present, pinned in 12s" in lines[1]
    assert "failed: auth: refused" in lines[2]
    assert lines[3].startswith("1/3 present, 1 pulling, 1 failed") and "60%" in lines[3]
    assert all(len(line) < 40 for line in display.render(states, fs, width=40))


def test_live_display_redraws_in_place_and_keeps_log_lines_above():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        display = console.LiveDisplay(out)
        display.hook_logging()
        display.show(["line 1", "line 2"])
        display.show(["line 1b", "line 2b"])
        logging.getLogger("t").warning("a log record")
        display.close()
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert "\x1b[2F" in text  # moved up over the two drawn lines to redraw them
    assert text.index("a log record") > text.index("line 2b")
    assert text.rstrip().endswith("line 2b")  # block redrawn after the record


def test_console_reporter_draws_once_more_on_close_and_only_once():
    out = io.StringIO()
    reporter = display.ConsoleReporter(out, min_interval_s=0)
    reporter.update([ImageState("reg/a:1", "present")], None)
    reporter.close()
    reporter.close()
    reporter.update([ImageState("reg/a:1", "failed")], None)
    assert out.getvalue().count("reg/a:1") == 2  # the update, then the final draw
    assert "failed" not in out.getvalue()


def test_log_reporter_logs_state_changes_and_progress_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="nodeagent.prewarm")
    reporter = display.LogReporter(interval_s=3600)
    pulling = ImageState("reg/a:1", "pulling", bytes_done=5 * MiB, bytes_total=10 * MiB,
                         rate_bps=MiB, eta_s=5, phase="downloading", attempts=1)
    reporter.update([pulling], None)  # first progress line for a new image
    reporter.update([pulling], None)  # within the interval: nothing
    reporter.event(ImageState("reg/a:1", "present", pinned=True))
    records = [(r.getMessage(), r.fields) for r in caplog.records]
    assert [m for m, _ in records] == ["pull progress", "image present"]
    assert records[0][1]["percent"] == 50.0 and records[0][1]["mib_per_s"] == 1.0
    assert records[1][1]["pinned"] is True


def test_overall_line_shows_a_rate_only_while_pulling():
    from nodeagent.prewarm.display import overall_line
    from nodeagent.prewarm.state import ImageState

    done = ImageState(image="reg/a:1", state="present", bytes_done=100, bytes_total=100)
    assert "MiB/s" not in overall_line([done], None)
    assert overall_line([done], None).startswith("1/1 present  100 B/100 B")
