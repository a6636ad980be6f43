"""The gallery is a review tool: a header with the counts, cost, tokens, manifest and date; the cards in
manifest order, pending tasks too; sorting and filters kept in the URL; images in their own aspect ratio;
a larger view of any task; and a page rebuilt during the run, in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from batch.output import gallery
from batch.running import client, job
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.browser import Page
from tests.conftest import KEY, Outcome, env_for, ledger, make_image, results
from tests.output.test_gallery import in_browser, needs_chromium, page_data, visible_cards

ORDER = ["wide", "tall", "refused", "look", "later"]


@pytest.fixture
def review_dir(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> Path:
    """A run with a landscape and a portrait image, a failure, a chat about a photo, and one task whose
    result line is gone (pending); results.jsonl in an order that is not the manifest's."""
    make_image(tmp_path / "photos" / "shelf.png", (600, 400), color=(30, 120, 200))
    manifest = write("""
        defaults: {model: gpt-image-1, quality: low}
        tasks:
          - {kind: generate, id: wide, prompt: a wide valley, size: 1536x1024}
          - {kind: generate, id: tall, prompt: a tall tower, size: 1024x1536}
          - {kind: generate, id: refused, prompt: something forbidden}
          - {kind: chat, id: look, model: gemini-2.5-flash, prompt: what is on the shelf?, images: [photos/shelf.png]}
          - {kind: generate, id: later, prompt: a quiet pond}
    """)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in reversed(lines) if '"id": "later"' not in line]
    (out / "results.jsonl").write_text("".join(kept))
    assert cli("gallery", out).code == 0
    return out


def test_the_page_holds_the_header_figures_and_the_manifests_order(review_dir: Path) -> None:
    data = page_data(review_dir / "index.html")
    assert [item["id"] for item in data["items"]] == ORDER
    assert data["statuses"] == {"succeeded": 3, "failed": 1, "pending": 1}
    done = results(review_dir)
    # what the ledger says was spent: `later`'s answer too, paid though its line is gone (the cards' sum
    # left it out, as it left out paid failures a retry set aside)
    spent = ledger(review_dir)
    assert data["tokens"] == sum(line["total_tokens"] for line in spent)
    assert data["cost"] == pytest.approx(sum(line["cost"] for line in spent), abs=1e-6)
    assert data["tokens"] > sum(r["usage"]["total_tokens"] for r in done.values() if r["usage"])
    assert data["manifest"].endswith("job.yaml") and data["built"][:4].isdigit()
    later = data["items"][-1]
    assert later["status"] == "pending" and later["prompt"] == "a quiet pond" and later["thumbs"] == []


def test_the_page_a_retry_writes_at_its_end_counts_the_failures_it_paid_for_before(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Three answers that were no images, paid for, then retry-failed: the page the retry wrote at its end
    summed its tasks' lines, which no longer say the first answers were bought (a night's $1.33 of $1.83).
    The run's page takes the ledger as the run began, and the run's own spend."""
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: picture {i}}}\n" for i in range(3))
    )
    out = tmp_path / "out"
    bad = SimConfig(api_key=KEY, faults={"bad_image": 1.0})
    with simulator_in_thread(bad) as sim:
        assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        assert cli("retry-failed", out, env=env_for(sim)).code == 0
    paid = ledger(out)
    assert len(paid) == 6
    data = page_data(out / "index.html")
    assert data["tokens"] == sum(line["total_tokens"] for line in paid)
    assert data["cost"] == pytest.approx(sum(line["cost"] or 0 for line in paid), abs=1e-6)


@needs_chromium
@pytest.mark.timeout(120)
def test_in_chromium_the_gallery_is_a_review_tool(review_dir: Path) -> None:
    page_uri = (review_dir / "index.html").as_uri()

    async def check(page: Page) -> None:
        await page.open(page_uri)
        await page.until("document.querySelectorAll('#grid .card').length === 5")
        assert [c["id"] for c in await visible_cards(page)] == ORDER
        counts = await page.js(
            "Object.fromEntries([...document.querySelectorAll('#stats b')].map(b => [b.dataset.count, b.textContent]))"
        )
        assert counts == {"done": "3", "failed": "1", "pending": "1"}
        header = await page.js("document.getElementById('stats').textContent")
        assert "tokens" in header and "$" in header and "job.yaml" in header and "built 20" in header
        # images in their own aspect ratio, not cropped square
        shapes = await page.until(
            """(() => { const imgs = ['wide', 'tall'].map(id => document.querySelector(`.card[data-id=${id}] .pics img`));
                 return imgs.every(i => i.complete && i.naturalWidth) && imgs.map(i => [i.clientWidth / i.clientHeight, i.naturalWidth / i.naturalHeight]); })()"""
        )
        for shown, natural in shapes:
            assert shown == pytest.approx(natural, rel=0.03)
        assert shapes[0][0] > 1.3 and shapes[1][0] < 0.8
        # the input photo of a chat, larger than 56 px
        height = await page.until(
            "(i => i && i.complete && i.naturalWidth && i.clientHeight)(document.querySelector('.card[data-id=look] .ins img'))"
        )
        assert height > 56
        # filters and sorting go into the URL
        await page.js("document.querySelector('#filters button[data-key=status][data-value=failed]').click()")
        assert [c["id"] for c in await visible_cards(page)] == ["refused"]
        assert await page.js("location.hash") == "#status=failed"
        await page.js(
            "(s => { s.value = 'cost'; s.dispatchEvent(new Event('change')); })(document.getElementById('sort'))"
        )
        assert "sort=cost" in await page.js("location.hash")
        # the larger view: the full image, the inputs, the meta, the whole answer
        await page.js("location.hash = ''")
        await page.until("document.querySelectorAll('#grid .card').length === 5")
        await page.js("document.querySelector('.card[data-id=wide] .pics a').click()")
        size = await page.until(
            "(i => i && i.complete && i.naturalWidth && [i.naturalWidth, i.naturalHeight])(document.getElementById('large'))"
        )
        assert size == [1536, 1024]
        assert await page.js("document.getElementById('viewer').classList.contains('open')")
        side = await page.js("document.querySelector('#viewer .side').textContent")
        assert "a wide valley" in side and "1536x1024" in side and "gpt-image-1" in side
        await page.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        assert not await page.js("document.getElementById('viewer').classList.contains('open')")
        await page.js("document.querySelector('.card[data-id=look] .id').click()")
        answer = await page.js("document.querySelector('#viewer .answer').textContent")
        assert answer == results(review_dir)["look"]["text"]
        assert await page.js("document.querySelectorAll('#viewer .ins img').length") == 1

    in_browser(check)

    async def linked(page: Page) -> None:
        """A link with the filters in it shows the same cards."""
        await page.open(page_uri + "#status=pending")
        await page.until("document.querySelectorAll('#grid .card').length === 1")
        assert [c["id"] for c in await visible_cards(page)] == ["later"]
        await page.open("about:blank")  # a new load, not a change of hash
        await page.open(page_uri + "#sort=cost&kind=generate")
        await page.until("document.querySelectorAll('#grid .card').length === 4")
        cards = [c["id"] for c in await visible_cards(page)]
        done = results(review_dir)
        costs = [done[i]["cost"] or 0 if i in done else 0 for i in cards]
        assert costs == sorted(costs, reverse=True)
        on = await page.js("[...document.querySelectorAll('#filters button.on')].map(b => b.dataset.value)")
        assert on == ["all", "generate"]

    in_browser(linked)


def test_the_page_is_rebuilt_during_a_run_in_a_process_of_its_own(
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """During the run, child processes build the page (a thread would hold the event loop's GIL); the
    run's own process builds it once, whole, at its end."""
    in_run: list[tuple[bool, int]] = []  # the builds made in this process: (make_missing, results then)
    real_build = gallery.build

    def recording(
        root: Path, scope: Any = None, *, make_missing: bool = True, cards: Any = None, spent: Any = None
    ) -> Path:
        in_run.append((make_missing, len((root / "results.jsonl").read_text().splitlines())))
        return real_build(root, scope, make_missing=make_missing, cards=cards, spent=spent)

    children: list[dict[str, Any]] = []  # the page each child left
    built = threading.Event()
    real_child = gallery.Rebuilder._build

    def child(self: gallery.Rebuilder) -> bool:
        made = real_child(self)
        if made:
            children.append(page_data(self.root / "index.html"))
            built.set()
        return made

    real_send = client.ApiClient.send

    async def send(self: client.ApiClient, endpoint: str, request: Any, request_id: str) -> Any:
        if request_id.startswith("t15/"):  # the last task waits for a page built while it is pending
            await anyio.to_thread.run_sync(built.wait, 60)
        return await real_send(self, endpoint, request, request_id)

    monkeypatch.setattr(gallery, "build", recording)
    monkeypatch.setattr(gallery.Rebuilder, "_build", child)
    monkeypatch.setattr(client.ApiClient, "send", send)
    monkeypatch.setattr(gallery, "REBUILD_EVERY", 0.05)
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i}}}\n" for i in range(16))
    )
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.05)) as sim:
        assert cli("run", manifest, "--out", out, "-c", "2", env=env_for(sim)).code == 0
    assert built.is_set() and children
    assert children[0]["tasks"] == 16 and children[0]["statuses"].get("pending", 0) >= 1
    assert in_run == [(True, 16)]  # only the last build, whole, in the run's process
    assert page_data(out / "index.html")["statuses"] == {"succeeded": 16}


def _not_here(*args: object, **kwargs: object) -> None:
    raise AssertionError("a page built in the run's own process")


def test_a_big_runs_last_page_is_built_in_a_process_of_its_own(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gallery, "build", _not_here)
    monkeypatch.setattr(job, "PAGE_APART", 3)  # a run of 3 tasks or more is "big"
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: p {i}}}\n" for i in range(3))
    )
    out = tmp_path / "out"
    outcome = cli("run", manifest, "--out", out, env=env_for(sim))
    assert outcome.code == 0 and "could not write the gallery" not in outcome.err
    data = page_data(out / "index.html")
    assert data["statuses"] == {"succeeded": 3}
    assert all((out / thumb).is_file() for item in data["items"] for thumb in item["thumbs"])


def test_a_last_page_that_fails_leaves_no_page_for_the_summary_to_name(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page from before (or from during the run) would show tasks as pending that are done."""
    tasks = [f"  - {{kind: chat, id: q{i}, model: gemini-2.5-flash, prompt: q {i}}}\n" for i in range(3)]
    out = tmp_path / "out"
    assert cli("run", write("tasks:\n" + "".join(tasks[:2])), "--out", out, env=env_for(sim)).code == 0
    assert page_data(out / "index.html")["tasks"] == 2
    monkeypatch.setattr(job, "PAGE_APART", 1)
    monkeypatch.setattr(gallery, "_CHILD", "import sys; print('no room left', file=sys.stderr); sys.exit(1)")
    outcome = cli("run", write("tasks:\n" + "".join(tasks), "all.yaml"), "--out", out, env=env_for(sim))
    assert outcome.code == 0 and "could not write the gallery: no room left" in outcome.err
    assert not (out / "index.html").exists() and "index.html" not in outcome.out


def test_the_rebuilder_builds_only_when_results_grew_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gallery, "build", _not_here)
    results = tmp_path / "results.jsonl"
    results.write_text('{"id": "a", "kind": "chat", "status": "succeeded"}\n')
    rebuilder = gallery.Rebuilder(tmp_path, every=0.01, most=1.0)  # no pause for the build's own time

    def until(done: Callable[[], bool]) -> None:
        end = time.monotonic() + 30
        while not done() and time.monotonic() < end:
            time.sleep(0.01)  # the thread's own clock: nothing else to wait on

    until(lambda: rebuilder.builds == 1)
    looked = rebuilder.looks
    until(lambda: rebuilder.looks >= looked + 5)  # 5 more looks at an unchanged results.jsonl
    assert rebuilder.builds == 1 and page_data(tmp_path / "index.html")["statuses"] == {"succeeded": 1}
    with results.open("a") as lines:
        lines.write('{"id": "b", "kind": "chat", "status": "failed"}\n')
    until(lambda: rebuilder.builds == 2)
    assert page_data(tmp_path / "index.html")["statuses"] == {"succeeded": 1, "failed": 1}
    rebuilder.close()
    assert not rebuilder._thread.is_alive()


def _many_results(folder: Path, count: int = 100_000) -> None:
    """A results.jsonl whose page takes seconds to build."""
    with (folder / "results.jsonl").open("w") as lines:
        for i in range(count):
            lines.write(f'{{"id": "t{i}", "kind": "chat", "status": "succeeded", "text": "answer {i}"}}\n')


def _writing_page(folder: Path, running: Callable[[], bool]) -> bool:
    """Wait until a build has begun to write the page (its temporary file is there); whether it has."""
    end = time.monotonic() + 60
    while not list(folder.glob(".index.html.*.tmp")) and running() and time.monotonic() < end:
        time.sleep(0.005)
    return bool(list(folder.glob(".index.html.*.tmp")))


def _builder(folder: Path, *, whole: bool) -> subprocess.Popen[bytes]:
    """A stand-in for a run, in a session of its own, as a terminal's foreground job: it ignores SIGINT
    (a run stops gracefully), starts a build of `folder`'s page and prints the child's pid; a whole
    build (a big run's last page) it waits for, saying "built" when the page is written."""
    script = (
        "import signal, sys; from pathlib import Path; from batch.output import gallery; "
        "signal.signal(signal.SIGINT, lambda *a: None); folder = Path(sys.argv[1]); "
        + (
            "gallery.build_apart(folder); print('built', flush=True)"
            if whole
            else "child = gallery._page_process(folder, whole=False); print(child.pid, flush=True); "
            "sys.stdin.read()"
        )
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_a_ctrl_c_at_the_terminal_does_not_stop_a_big_runs_last_page(tmp_path: Path) -> None:
    """SIGINT to the run's whole process group (what a terminal's Ctrl-C is) is the run's to handle: the
    page's build, in a session of its own, is not interrupted."""
    _many_results(tmp_path)
    run = _builder(tmp_path, whole=True)
    assert _writing_page(tmp_path, lambda: run.poll() is None)
    os.killpg(run.pid, signal.SIGINT)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0 and out.strip() == b"built"
    assert page_data(tmp_path / "index.html")["statuses"] == {"succeeded": 100_000}


def test_a_page_build_stops_when_its_run_is_killed(tmp_path: Path) -> None:
    """A run killed with SIGKILL: its build stops (within a second or so) rather than finish a page that
    a later run may have written since."""
    _many_results(tmp_path)
    run = _builder(tmp_path, whole=False)
    assert run.stdout is not None
    child = int(run.stdout.readline())
    assert _writing_page(tmp_path, lambda: run.poll() is None)
    run.kill()
    run.communicate(timeout=60)
    end = time.monotonic() + 60
    while _alive(child) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(child)
    assert not (tmp_path / "index.html").exists() and not list(tmp_path.glob(".index.html.*"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_page_build_stopped_by_the_run_leaves_no_half_page(tmp_path: Path) -> None:
    """SIGTERM (the run ending mid-build) unwinds the child's build: exit 143, no temporary file."""
    _many_results(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "batch.output.pagebuild", str(tmp_path)], stderr=subprocess.DEVNULL
    )
    assert _writing_page(tmp_path, lambda: child.poll() is None)
    child.terminate()
    assert child.wait(timeout=60) == 143
    assert not list(tmp_path.glob(".index.html.*")) and not (tmp_path / "index.html").exists()


def test_the_run_ending_stops_a_page_build_in_progress(tmp_path: Path) -> None:
    """The run does not wait for a page it would replace at its end: close() stops the child."""
    _many_results(tmp_path)
    rebuilder = gallery.Rebuilder(tmp_path, every=0.01)
    assert _writing_page(tmp_path, rebuilder._thread.is_alive)
    rebuilder.close()
    assert rebuilder.builds == 0 and not list(tmp_path.glob(".index.html.*"))
    assert not (tmp_path / "index.html").exists()


def test_orphaned_lines_get_cards_only_when_asked_for(cli: Callable[..., Outcome], edited: Path) -> None:
    assert cli("gallery", edited).code == 0
    data = page_data(edited / "index.html")
    assert len(data["items"]) == 4 and data["statuses"] == {"succeeded": 4}
    assert cli("gallery", edited, "--include-orphaned").code == 0
    data = page_data(edited / "index.html")
    assert data["statuses"] == {"succeeded": 4, "orphaned": 2}
    assert [item.get("orphaned", False) for item in data["items"]] == [False] * 4 + [True] * 2
