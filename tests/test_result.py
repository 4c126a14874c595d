"""Commands return results; one runner turns errors into results, one renderer prints them."""
from __future__ import annotations

import json

from devbox.commands.status import BoxStatus, read_status
from devbox.commands.up import UpResult
from devbox.errors import DevboxError, HostUnreachable
from devbox.facts import Facts
from devbox.result import HostResult, for_each_host, render, worst_exit


def test_a_failing_host_becomes_its_own_result_and_never_stops_the_others():
    def work(name, result):
        if name == "bad":
            raise HostUnreachable("bad: cannot connect", "check `ssh bad`")
        result.changed = True

    results = for_each_host(["a", "bad", "c"], HostResult, work)
    assert [r.host for r in results] == ["a", "bad", "c"]
    assert [r.exit_code for r in results] == [0, 3, 0] and worst_exit(results) == 3
    assert results[1].text() == "bad: FAILED: cannot connect (check `ssh bad`)"


def test_status_rows_print_under_one_header_and_an_error_is_unreachable():
    row = BoxStatus("h1")
    read_status(row, Facts(docker_version="24.0"))
    broken = for_each_host(["h2"], BoxStatus, lambda name, result: (_ for _ in ()).throw(DevboxError("h2: no route", exit_code=3)))[0]
    text = render([row, broken], as_json=False).splitlines()
    assert text[0].startswith("BOX") and "absent" in text[1] and "unreachable" in text[2] and "no route" in text[2]
    data = json.loads(render([row, broken], as_json=True))
    assert data[1]["state"] == "unreachable" and data[1]["reason"] == data[1]["error"] and data[1]["exit_code"] == 3


def test_a_dry_run_prints_the_commands_and_why_nothing_is_needed():
    result = UpResult("h", dry_run=True, steps=["start box"], commands=["docker start devbox-h"])
    assert result.text().splitlines() == ["h: would run:", "  - start box", "      $ docker start devbox-h"]
    idle = UpResult("h", dry_run=True, notes=["box runs spec abc: nothing to do"])
    assert "nothing to do: box runs spec abc" in idle.text()
    assert json.loads(render([result], as_json=True, one=True))["commands"] == ["docker start devbox-h"]
