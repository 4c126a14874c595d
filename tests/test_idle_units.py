"""Issue 20 item 5, the pure parts: the idle_stop duration, the watcher's state file, its stop line."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from devbox.idle import IdleState, parse_duration, stopped_reason

STATE = """updated=1796154515
window=7200
threshold=5
ssh_sessions=2
jobs=train,eval
gpu_util=0:87,1:3
idle_since=
"""


@pytest.mark.parametrize("text, seconds", [
    ("20s", 20), ("1s", 1), ("90m", 5400), ("2h", 7200), ("1d", 86400), ("30d", 30 * 86400),
    ("720h", 30 * 86400), ("0002h", 7200),
])
def test_a_duration_is_a_whole_number_of_seconds_minutes_hours_or_days(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "0", "0s", "0h", "-1h", "2", "h", "2 h", " 2h", "2h ", "2H", "1.5h", "2h30m", "31d", "721h", "2592001s",
    "9999999999d", "٢h", "2w", "2hours", "+2h", "0x10s", "2h\n",
])
def test_anything_else_is_refused_with_the_allowed_form_in_the_message(text):
    with pytest.raises(ValueError) as refused:
        parse_duration(text)
    message = str(refused.value)
    assert "\n" not in message and repr(text) in message and '"2h"' in message and "30d" in message


@pytest.mark.parametrize("value", [7200, None, True, b"2h", ["2h"]])
def test_a_duration_that_is_not_text_is_refused_the_same_way(value):
    with pytest.raises(ValueError, match='e.g. "20s"'):
        parse_duration(value)


@given(st.text(max_size=12))
def test_parse_duration_answers_only_seconds_in_range_or_value_error(text):
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 1 <= seconds <= 30 * 86400 and text[-1] in "smhd"


def test_the_state_file_reads_back_every_field():
    state = IdleState.parse(STATE)
    assert state == IdleState(updated=1796154515, window=7200, threshold=5, ssh_sessions=2, jobs=("train", "eval"),
                              gpu_util=((0, 87), (1, 3)), idle_since=None)
    assert state.stops_at is None


def test_reasons_say_why_a_box_is_kept_up_in_the_users_words():
    assert IdleState.parse(STATE).reasons() == ["2 ssh sessions", "job train running", "job eval running", "GPU 0 at 87 %"]
    assert IdleState.parse(STATE.replace("ssh_sessions=2", "ssh_sessions=1")).reasons()[0] == "1 ssh session"


def test_a_gpu_exactly_at_the_threshold_keeps_the_box_up_and_one_below_does_not():
    at = IdleState.parse(STATE.replace("ssh_sessions=2", "ssh_sessions=0").replace("jobs=train,eval", "jobs=")
                         .replace("gpu_util=0:87,1:3", "gpu_util=0:4,1:5"))
    assert at.reasons() == ["GPU 1 at 5 %"]


def test_an_idle_box_has_no_reasons_and_says_when_it_stops():
    idle = IdleState.parse("updated=1000\nwindow=20\nthreshold=5\nssh_sessions=0\njobs=\ngpu_util=\nidle_since=990\n")
    assert idle.reasons() == [] and idle.idle_since == 990 and idle.stops_at == 1010


def test_unknown_keys_are_skipped_and_optional_ones_default():
    state = IdleState.parse("updated=1\nwindow=20\nthreshold=5\nfuture_key=x=y\n")
    assert state.ssh_sessions == 0 and state.jobs == () and state.gpu_util == () and state.idle_since is None


@pytest.mark.parametrize("text", [
    "", "garbage", "window=20\nthreshold=5\n", "updated=1\nwindow=twenty\nthreshold=5\n",
    "updated=1\nwindow=20\nthreshold=5\nssh_sessions=-1\n", "updated=1\nwindow=20\nthreshold=5\ngpu_util=0-87\n",
    "updated=1\nwindow=20\nthreshold=5\ngpu_util=0:\n", "updated=1\nwindow=20\nthreshold=5\nidle_since=soon\n",
])
def test_a_state_file_that_is_not_the_watchers_is_a_value_error(text):
    with pytest.raises(ValueError, match="not a devbox idle state file"):
        IdleState.parse(text)


@given(st.text(max_size=200))
def test_any_state_text_parses_or_is_a_value_error_and_reasons_carry_no_control_characters(text):
    try:
        state = IdleState.parse(text)
    except ValueError:
        return
    assert all(ch.isprintable() for reason in state.reasons() for ch in reason)


def test_a_job_name_with_an_escape_sequence_is_shown_harmlessly():
    state = IdleState.parse("updated=1\nwindow=20\nthreshold=5\njobs=a\x1b]0;pwned\x07b\n")
    assert state.reasons() == ["job a?]0;pwned?b running"]


LOGS = """Server listening on 0.0.0.0 port 2222.
devbox-idle: watching: the box stops after 20s with no ssh session, no job and no GPU at or above 5% (sampled every 2s)
Server listening on :: port 2222.
Accepted publickey for dev from 172.18.0.1 port 40000 ssh2: ED25519 SHA256:x
devbox-idle: stopped idle 20s since 2026-12-01T14:02:03Z (no ssh session, no job, GPUs under 5%)
Received signal 15; terminating.
"""


def test_the_stop_reason_is_the_last_stop_line_without_its_prefix():
    assert stopped_reason(LOGS) == "idle 20s since 2026-12-01T14:02:03Z (no ssh session, no job, GPUs under 5%)"
    assert stopped_reason(LOGS.replace("\n", "\r\n")) == stopped_reason(LOGS)


def test_a_box_that_did_not_stop_by_idling_has_no_stop_reason():
    assert stopped_reason("") is None
    assert stopped_reason(LOGS.replace("devbox-idle: stopped", "devbox-idle: kept")) is None
    # It idled once, was started again (without a watcher) and then stopped by hand.
    assert stopped_reason(LOGS + "Server listening on 0.0.0.0 port 2222.\nReceived signal 15; terminating.\n") is None
    # Started again with the watcher, whose stdout alone was read.
    assert stopped_reason(LOGS + "devbox-idle: watching: the box stops after 20s ...\n") is None


def test_a_second_idle_stop_reports_the_latest():
    again = LOGS.replace("14:02:03", "15:00:00")
    assert stopped_reason(LOGS + again).startswith("idle 20s since 2026-12-01T15:00:00Z")


def test_a_stop_line_written_by_someone_in_the_box_cannot_carry_escapes_or_floods():
    reason = stopped_reason("devbox-idle: stopped \x1b[2J\x1b]52;c;ZXZpbA==\x07" + "x" * 5000 + "\n")
    assert reason.startswith("?[2J?]52;c;ZXZpbA==?") and len(reason) <= 300
