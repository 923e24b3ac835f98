"""The benchmark suite's bookkeeping and report, without running anything: repeated runs are
kept whole, tables show the median with every run, targets divide medians."""

from __future__ import annotations

from typing import Any

import pytest

from bench import run


def _run(n: int, rps: float, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "server": "catalyzer",
        "run": n,
        "loadavg": (1.0 + n, 1.0, 1.0),
        "command": "twistd -n catalyzer --listen tcp:PORT",
        "rps": rps,
        "requests": int(rps * 8),
        "p50_ms": rps / 10_000,
        "p99_ms": rps / 1_000,
        "errors": {"connect": 0, "read": n, "write": 0, "timeout": 0, "non2xx": 0},
        "error_total": n,
        "peak_rss": 50 * 1024**2 + n,
        "max_accept_queue": n,
        "check": {"ok": True},
    }
    record.update(extra)
    return record


def _data(scenarios: list[dict[str, Any]], runs: int = 3) -> dict[str, Any]:
    return {
        "id": "20261205T000000Z",
        "quick": False,
        "only": [],
        "duration": 8,
        "runs": runs,
        "wrk_threads": 2,
        "log_dir": "bench/results/logs/20261205T000000Z",
        "elapsed_seconds": 100.0,
        "machine": {
            "cpu": "test",
            "nproc": 2,
            "memory": "1 kB",
            "kernel": "6",
            "python": "3.11",
            "wrk": "wrk 4",
            "versions": {"catalyzer": "0.1.0"},
            "loadavg_before": (0.5, 0.5, 0.5),
            "loadavg_after": (0.7, 0.6, 0.5),
        },
        "scenarios": scenarios,
    }


def _scenario(name: str, results: list[dict[str, Any]], section: str = "single") -> dict[str, Any]:
    return {
        "name": name,
        "title": run.BY_SCENARIO[name].title,
        "section": section,
        "reference": run.SECTION_REFERENCE[section],
        "skipped": [],
        "results": results,
    }


def test_aggregate_takes_medians_sums_errors_and_keeps_every_run() -> None:
    runs = [_run(1, 25_327.0), _run(2, 25_562.0), _run(3, 25_487.0)]
    r = run.aggregate("catalyzer", runs)
    assert r["rps"] == 25_487.0
    assert r["p99_ms"] == pytest.approx(25.487)
    assert r["errors"]["read"] == 6 and r["error_total"] == 6
    assert r["peak_rss"] == 50 * 1024**2 + 3
    assert r["max_accept_queue"] == 3
    assert r["runs"] == runs
    assert r["failed_runs"] == []


def test_a_failed_run_is_left_out_of_the_median_and_all_failed_is_an_error() -> None:
    runs = [_run(1, 100.0), {"server": "catalyzer", "run": 2, "error": "not ready"}]
    runs.append(_run(3, 300.0))
    r = run.aggregate("catalyzer", runs)
    assert r["rps"] == 200.0
    assert r["failed_runs"] == [2]
    failed = run.aggregate("catalyzer", [{"server": "catalyzer", "run": 1, "error": "boom"}])
    assert failed["error"] == "boom"


def test_slow_client_share_is_the_median_of_each_runs_share() -> None:
    runs = [
        _run(n, rps, undisturbed={"rps": base}, ratio=rps / base)
        for n, rps, base in ((1, 90.0, 100.0), (2, 50.0, 100.0), (3, 99.0, 100.0))
    ]
    r = run.aggregate("catalyzer", runs)
    assert r["ratio"] == pytest.approx(0.90)
    assert r["undisturbed"]["rps"] == 100.0


def test_median_split_is_one_real_run_and_lists_every_run() -> None:
    splits: list[dict[str, Any] | None] = [
        {"workers": [{"slot": 0, "requests": 30}, {"slot": 1, "requests": 10}], "ratio": 3.0},
        {"workers": [{"slot": 0, "requests": 11}, {"slot": 1, "requests": 10}], "ratio": 1.1},
        {"workers": [{"slot": 0, "requests": 9}, {"slot": 1, "requests": 0}], "ratio": None},
    ]
    chosen = run.median_split(splits)
    assert chosen is not None
    assert chosen["ratio"] == 3.0  # between 1.1 and "a worker served nothing"
    assert chosen["runs"] == splits
    assert run.median_split([{"error": "no dump"}]) == {"error": "no dump"}


def test_each_round_starts_one_server_further_on() -> None:
    specs = list(run.SERVERS[:3])
    names = [[s.name for s in run.round_order(specs, n)] for n in (1, 2, 3, 4)]
    assert names[0] == [s.name for s in specs]
    assert names[1] == [specs[1].name, specs[2].name, specs[0].name]
    assert names[2] == [specs[2].name, specs[0].name, specs[1].name]
    assert names[3] == names[0]
    assert all(sorted(n) == sorted(names[0]) for n in names)


def test_table_shows_the_median_then_every_run_in_run_order() -> None:
    cat = run.aggregate("catalyzer", [_run(1, 25_327.0), _run(2, 25_562.0), _run(3, 25_487.0)])
    twistd = run.aggregate(
        "twistd-web",
        [
            {**_run(n, v), "server": "twistd-web"}
            for n, v in ((1, 2_000.0), (2, 2_600.0), (3, 2_500.0))
        ],
    )
    text = run.render(_data([_scenario("hello_keepalive", [cat, twistd])]))
    assert "| catalyzer (1 process) | 25,487 (25,327 / 25,562 / 25,487) | 1.00x |" in text
    assert "| twistd web --wsgi | 2,500 (2,000 / 2,600 / 2,500) | 0.10x |" in text
    # The target divides medians, and gives each round's ratio as well.
    assert "vs `twistd web --wsgi`: 10.19x (target 10.00x); per round 12.66x / 9.83x / 10.19x" in (
        text
    )
    assert "median of the 3 runs" in text
    assert "bench/results/logs/20261205T000000Z/" in text  # where twistd web logged
    assert "lowest 2.00, median 3.00, highest 4.00" in text  # load as each measurement started


def test_results_saved_before_repeated_runs_still_render() -> None:
    old = _run(1, 1_000.0)
    del old["run"], old["loadavg"]
    data = _data([_scenario("hello_keepalive", [old])], runs=1)
    del data["runs"], data["log_dir"]
    text = run.render(data)
    assert "| catalyzer (1 process) | 1,000 | 1.00x |" in text
    assert "single measurement" in text
    assert "scratch file" in text


def test_procs2_targets_compare_medians_across_sections() -> None:
    one = run.aggregate("catalyzer", [_run(n, 1_000.0) for n in (1, 2, 3)])
    two = run.aggregate(
        run.CATALYZER_PREFORK.name,
        [
            {**_run(n, v), "server": run.CATALYZER_PREFORK.name}
            for n, v in ((1, 900.0), (2, 1_200.0), (3, 1_100.0))
        ],
    )
    data = _data([_scenario("post_1m", [one]), _scenario("procs2_post_1m", [two], section="multi")])
    lines = run.targets(data)
    assert any("1 process, 1 MiB POST (never slower): 1.10x" in line for line in lines)


def _scaling(threaded: list[float], default: list[float], per_conn: int) -> dict[str, Any]:
    def variant(rps: list[float]) -> dict[str, Any]:
        return {"rps_median": sorted(rps)[1], "rps": rps, "p99_ms": [1.0] * 3, "errors": [0] * 3}

    threads = {"reactor": variant(default), "threads4": variant(threaded)}
    threads["overhead"] = round(1 - threads["threads4"]["rps_median"] / sorted(default)[1], 3)
    threads["overhead_rounds"] = [
        round(1 - t / d, 3) for t, d in zip(threaded, default, strict=True)
    ]
    concurrency = {
        f"c{n}": variant([v, v, v]) for n, v in ((10, 1000.0), (100, 1200.0), (1000, 960.0))
    }
    concurrency["flatness"] = 0.8
    return {
        "runs": 3,
        "duration": 8,
        "thread_count": 4,
        "threads": threads,
        "concurrency": concurrency,
        "idle": {
            "connections": 10_000,
            "answered": 10_000,
            "still_open": 10_000,
            "rss_before_mib": 50.0,
            "rss_after_mib": 100.0,
            "bytes_per_connection": per_conn,
        },
    }


def test_scaling_and_memory_targets_are_marked_from_their_runs() -> None:
    data = _data([])
    data["scaling"] = _scaling([850.0, 900.0, 700.0], [1000.0, 1000.0, 1000.0], 5_000)
    data["large_rss"] = {
        "huge": {"ok": True, "peak_over_idle": 20 * 2**20, "target_over_idle": 32 * 2**20},
        "huge_list": {"ok": True, "peak_over_idle": 40 * 2**20, "target_over_idle": 32 * 2**20},
    }
    text = "\n".join(run.targets(data))
    assert "**met** — `--threads 4` overhead on hello keep-alive" in text
    assert "15.0% (target under 20%); per round 15.0% / 10.0% / 30.0%" in text
    assert "**missed** — hello keep-alive flat from 10 to 1,000 connections" in text
    assert "**met** — memory per idle keep-alive connection (10,000 open" in text
    assert "**met** — 16 MiB response (one `bytes`)" in text
    assert "**missed** — 16 MiB response (a list of 1 MiB pieces)" in text
    data["scaling"] = _scaling([700.0, 700.0, 700.0], [1000.0, 1000.0, 1000.0], 7_000)
    del data["large_rss"]
    text = "\n".join(run.targets(data))
    assert "**missed** — `--threads 4` overhead on hello keep-alive" in text
    assert "**missed** — memory per idle keep-alive connection" in text
    assert "**not measured** — 16 MiB response (one `bytes`)" in text


def test_scaling_renders_every_run() -> None:
    from bench import scaling

    text = "\n".join(scaling.markdown(_scaling([850.0, 900.0, 700.0], [1.0e3] * 3, 5_000)))
    assert "| `--threads 4` | 850 | 850 / 900 / 700 |" in text
    assert "| 1,000 | 960 | 960 / 960 / 960 |" in text
    assert "**5,000 bytes per connection**" in text


def test_nginx_targets_divide_medians_and_show_each_round() -> None:
    from bench import nginx_gateway

    def case(rps: list[float | None]) -> dict[str, Any]:
        good = sorted(v for v in rps if v is not None)
        return {"rps_median": good[len(good) // 2], "rps": rps, "errors": 0, "failed": []}

    data = _data([])
    data["nginx"] = {
        "runs": 3,
        "duration": 8,
        "workers": 2,
        "connections": 32,
        "skipped": {"gunicorn-uwsgi": "no --protocol uwsgi"},
        "cases": {
            "catalyzer-uwsgi/hello": case([800.0, 900.0, 1000.0]),
            "catalyzer-uwsgi/post1m": case([100.0, 100.0, 100.0]),
            "uwsgi-uwsgi-socket/hello": case([1000.0, 1000.0, 1000.0]),
            "uwsgi-uwsgi-socket/post1m": case([50.0, None, 100.0]),
        },
    }
    text = "\n".join(run.targets(data))
    assert "**missed** — behind nginx, catalyzer `--uwsgi` vs uWSGI `--uwsgi-socket`, hello" in text
    assert "0.90x (target 1.00x)" in text
    assert "per round 0.80x / 0.90x / 1.00x" in text
    assert (
        "**met** — behind nginx, catalyzer `--uwsgi` vs uWSGI `--uwsgi-socket`, 1 MiB POST" in text
    )
    assert "**not measured** — behind nginx, catalyzer `--uwsgi` vs gunicorn" in text
    page = "\n".join(nginx_gateway.markdown(data["nginx"]))
    assert "| uwsgi-uwsgi-socket | 1,000 | 1,000 / 1,000 / 1,000 | 1.11x |" in page
    assert "| gunicorn-uwsgi | skipped: no --protocol uwsgi |" in page


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--duration", "0"], ["--only", "nope"]])
def test_bad_options_are_refused_before_anything_runs(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
