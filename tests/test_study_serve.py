"""`ldvce study serve`: study construction, server-side validation and isolation, 50 concurrent
participants over HTTP, and a server killed mid-study. The browser test is test_study_browser.py."""
from __future__ import annotations

import http.client
import io
import json
import random
import threading
import time

import numpy as np
import pytest
from PIL import Image

from dvce import runfolder
from study import read_export
from study.serve.design import StudyConfigError, build_study, load_config, pick_frames
from tests.study_server import ADMIN_TOKEN, REPO, StudyServer, admin, new_participant, request


# ------------------------------------------------------------------------------------ design
def _fake_run(root, ids, n_frames=6, switch=3):
    """A run folder in the `ldvce generate` layout, written through dvce.runfolder (no model)."""
    for img in ids:
        with runfolder.writing_item(root, img) as tmp:
            for k in range(n_frames):
                Image.fromarray(np.full((8, 8, 3), 20 * k, np.uint8)).save(tmp / runfolder.frame_name(k))
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / runfolder.ORIGINAL)
            runfolder.write_result(tmp, {"image": img, "switch_frame": switch,
                                         "frames": [{"index": k} for k in range(n_frames)]})
    return root


def test_pick_frames_is_even_and_keeps_the_switch_frame():
    assert pick_frames(9, None) == list(range(9))
    assert pick_frames(9, 12) == list(range(9))
    assert pick_frames(9, 5) == [0, 2, 4, 6, 8]
    assert pick_frames(9, 5, switch_frame=3) == [0, 3, 4, 6, 8]  # nearest (first on a tie) replaced
    assert pick_frames(9, 2, switch_frame=3) == [0, 3]
    assert pick_frames(21, 4, switch_frame=20) == [0, 7, 13, 20]
    assert pick_frames(21, 4, switch_frame=1) == [0, 1, 13, 20]
    for n in range(2, 30):
        for k in range(2, n + 1):
            for sf in (None, 0, n // 2, n - 1):
                idx = pick_frames(n, k, sf)
                assert len(idx) == k == len(set(idx)) and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < n
                assert sf is None or sf in idx


def test_build_study_from_runs_and_config(tmp_path):
    run = _fake_run(tmp_path / "run", ["10", "11", "12"], n_frames=9, switch=5)
    (tmp_path / "s.yaml").write_text("question: Is this person wearing glasses?\nimages: ['12', '10']\n"
                                     "annotation_images: ['10']\nframes: 4\nseed: 3\n")
    study = build_study([run], load_config(tmp_path / "s.yaml"))
    assert study.selection_images == ["12", "10"] and study.annotation_images == ["10"]
    assert study.images["12"].shown_indices == (0, 3, 5, 8)  # evenly, switch frame 5 included
    assert study.config["question"] == "Is this person wearing glasses?"
    p1, p2 = study.plan("a"), study.plan("b")
    assert sorted(p1) == sorted(p2) == ["ann:10", "sel:10", "sel:12"]
    assert p1[-1] == "ann:10" and study.plan("a") == p1  # selection block first; seeded
    orders = {tuple(study.plan(str(i))) for i in range(20)}
    assert len(orders) == 2  # both orders of the 2 selection images occur


@pytest.mark.parametrize("yaml_text, runs, match", [
    ("colour: red\n", ["a"], "unknown key"),
    ("images: ['99']\n", ["a"], "99 named in the config are in none"),
    ("frames: 1\n", ["a"], "'frames' must be an integer >= 2"),
    ("tasks: [selection, drawing]\n", ["a"], "'tasks'"),
    ("catch_trials: [{image: '10', frames: [0, 0], expect: 5}]\n", ["a"], r"catch_trials\[0\]"),
    ("", ["a", "a2"], "is in both"),
    ("", ["u"], "letters, digits"),
])
def test_bad_study_is_refused_with_a_reason(tmp_path, yaml_text, runs, match):
    made = {"a": ["10", "11"], "a2": ["11"], "u": ["img_1"]}
    dirs = [_fake_run(tmp_path / r, made[r]) for r in runs]
    (tmp_path / "s.yaml").write_text(yaml_text)
    with pytest.raises(StudyConfigError, match=match):
        build_study(dirs, load_config(tmp_path / "s.yaml"))


# ------------------------------------------------------------------------------------ in-process app
@pytest.fixture
def client(study_run, tmp_path):
    from study.serve.app import create_app
    from study.serve.store import Store
    (tmp_path / "s.yaml").write_text("frames: 4\nmax_polygons: 2\nmax_points: 5\n"
                                     "catch_trials: [{image: '%s', frames: [0, 0, 0], expect: -1}]\n"
                                     % runfolder.list_items(study_run)[0].image_id)
    study = build_study([study_run], load_config(tmp_path / "s.yaml"))
    store = Store(tmp_path / "db.sqlite")
    store.check_study(study.fingerprint(), study.display_size)
    c = create_app(study, store, ADMIN_TOKEN).test_client()
    c.study, c.store = study, store
    return c


def _start(client) -> str:
    r = client.post("/api/participants", json={})
    assert r.status_code == 201
    return r.get_json()["token"]


def _answer(client, token, body):
    return client.post(f"/api/p/{token}/answer", json=body)


def test_admin_routes_need_the_token(client):
    for path in ("/admin/export.csv", "/admin/progress"):
        r = client.get(path)
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
        assert client.get(path, headers={"Authorization": "Bearer wrong-token"}).status_code == 403
        assert client.get(path, headers={"X-Admin-Token": "x"}).status_code == 403
        assert client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    assert client.get("/admin").status_code == 200  # the page shell itself holds no data


def _valid_body(trial: dict) -> dict:
    """A valid answer to ``trial`` (the JSON of /api/p/<token>): the second frame, or a triangle."""
    if trial["kind"] == "selection":
        return {"trial": trial["key"], "choice": trial["frames"][1]["value"]}
    return {"trial": trial["key"], "polygons": [[[10, 10], [200, 10], [100, 150]]]}


def _answer_until(client, token, key) -> None:
    """Answer the participant's trials in order until ``key`` is the current one."""
    for _ in range(20):
        t = client.get(f"/api/p/{token}").get_json()["trial"]
        if t["key"] == key:
            return
        assert _answer(client, token, _valid_body(t)).status_code == 200
    raise AssertionError(f"{key} never came")


def test_participants_are_isolated(client):
    # Changed with issue 28: answers are taken in the participant's order only, so each one
    # first reaches the shared trial.
    study = client.study
    a, b = _start(client), _start(client)
    img = study.selection_images[0]
    shown = study.images[img].shown_indices
    _answer_until(client, b, f"sel:{img}")
    _answer_until(client, a, f"sel:{img}")
    before = {(r["participant_id"], r["trial"]) for r in client.store.all_answers()}
    sb = client.get(f"/api/p/{b}").get_json()
    assert _answer(client, b, {"trial": f"sel:{img}", "choice": shown[1]}).status_code == 200
    # A answers the same trial: it lands in A's record, B's answer is untouched.
    assert _answer(client, a, {"trial": f"sel:{img}", "choice": -1}).status_code == 200
    # Nobody, not even B, can change B's answer; a retry of the same answer is accepted.
    r = _answer(client, b, {"trial": f"sel:{img}", "choice": shown[2]})
    assert r.status_code == 409 and "already answered" in r.get_json()["error"]
    assert _answer(client, b, {"trial": f"sel:{img}", "choice": shown[1]}).status_code == 200
    # B's public id (as in the export) is not a way in; neither is a made-up token.
    for tok in (sb["participant"], "A" * 32, "../../etc/passwd", "x"):
        assert client.get(f"/api/p/{tok}").status_code == 404
        assert _answer(client, tok, {"trial": f"sel:{img}", "choice": -1}).status_code in (404, 405)
    sa = client.get(f"/api/p/{a}").get_json()
    assert sa["participant"] != sb["participant"]
    rows = {(r["participant_id"], r["trial"]): r["choice"] for r in client.store.all_answers()
            if (r["participant_id"], r["trial"]) not in before}
    assert rows == {(sb["participant"], f"sel:{img}"): shown[1], (sa["participant"], f"sel:{img}"): -1}


def test_bad_answers_get_4xx_and_store_nothing(client):
    study = client.study
    tok = _start(client)
    sel, ann = study.selection_images[0], study.annotation_images[0]
    shown = study.images[sel].shown_indices
    hidden = next(k for k in range(study.images[sel].n_frames) if k not in shown)
    sq = [[10, 10], [100, 10], [100, 100]]
    bad = [
        {"trial": f"sel:{sel}", "choice": study.images[sel].n_frames},  # out of range
        {"trial": f"sel:{sel}", "choice": hidden},  # a frame this trial does not show
        {"trial": f"sel:{sel}", "choice": -2},
        {"trial": f"sel:{sel}", "choice": True},
        {"trial": f"sel:{sel}", "choice": "3"},
        {"trial": f"sel:{sel}", "choice": 1, "extra": 1},
        {"trial": "catch:0", "choice": 3},  # 3 catch frames: positions 0..2
        {"trial": "sel:../../etc", "choice": 1},
        {"trial": "sel:99999", "choice": 1},
        {"trial": f"ann:{ann}", "polygons": [[[10, 10], [513, 10], [100, 100]]]},  # outside 512
        {"trial": f"ann:{ann}", "polygons": [[[10, -0.5], [50, 10], [100, 100]]]},
        {"trial": f"ann:{ann}", "polygons": [[[10, 10], [50, 10]]]},  # 2 points
        {"trial": f"ann:{ann}", "polygons": [[[i * 10, 5] for i in range(6)]]},  # max_points 5
        {"trial": f"ann:{ann}", "polygons": [sq, sq, sq]},  # max_polygons 2
        {"trial": f"ann:{ann}", "polygons": []},
        {"trial": f"ann:{ann}", "polygons": [[[10, 10, 3], [50, 10], [100, 100]]]},
        {"trial": f"ann:{ann}", "polygons": [[["10", 10], [50, 10], [100, 100]]]},
        {"trial": f"ann:{ann}", "choice": 1},
    ]
    for body in bad:
        r = _answer(client, tok, body)
        assert r.status_code == 400, (body, r.status_code)
        assert r.get_json()["error"], body
    # NaN is valid JSON to Python's parser; it must still be refused.
    r = client.post(f"/api/p/{tok}/answer", data=f'{{"trial": "ann:{ann}", "polygons": [[[NaN, 1], [5, 5], [9, 1]]]}}',
                    content_type="application/json")
    assert r.status_code == 400
    r = client.post(f"/api/p/{tok}/answer", data=b"{", content_type="application/json")
    assert r.status_code == 400
    r = client.post(f"/api/p/{tok}/answer", data="trial=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    big = json.dumps({"trial": f"ann:{ann}", "polygons": [[[1.5, 1.5]] * 4000]})
    r = client.post(f"/api/p/{tok}/answer", data=big, content_type="application/json")
    assert r.status_code == 413 and "too large" in r.get_json()["error"]
    # Images by study id only.
    for path in ("/img/99999/original", "/img/..%2F..%2Fetc%2Fpasswd/original", "/img/../result.json",
                 f"/img/{sel}/frame/{hidden}", f"/img/{sel}/frame/-1", f"/img/{sel}/frame/999",
                 f"/img/{sel}/frame/..%2Fresult.json", f"/img/{sel}/../{sel}/result.json"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/img/{sel}/frame/{shown[0]}").status_code == 200
    assert client.get(f"/img/{ann}/original").status_code == 200
    assert client.store.all_answers() == []
    assert client.get(f"/api/p/{tok}").get_json()["answered"] == 0
    # ...and then a good answer (to the current trial: changed with issue 28) is stored.
    assert _answer(client, tok, _valid_body(client.get(f"/api/p/{tok}").get_json()["trial"])).status_code == 200
    assert len(client.store.all_answers()) == 1


def test_consent_and_participant_limit(study_run, tmp_path):
    from study.serve.app import create_app
    from study.serve.store import Store
    (tmp_path / "s.yaml").write_text("consent: I agree.\nmax_participants: 1\n")
    study = build_study([study_run], load_config(tmp_path / "s.yaml"))
    c = create_app(study, Store(tmp_path / "db.sqlite"), ADMIN_TOKEN).test_client()
    assert c.post("/api/participants", json={}).status_code == 400
    assert c.post("/api/participants", json={"consent": "yes"}).status_code == 400
    assert c.post("/api/participants", json={"consent": True}).status_code == 201
    r = c.post("/api/participants", json={"consent": True})
    assert r.status_code == 403 and "full" in r.get_json()["error"]


# ------------------------------------------------------------------------------------ over HTTP
def _answer_for(trial: dict, i: int, rng: random.Random):
    """A participant-specific valid answer: selections vary, polygons carry the participant's index."""
    if trial["kind"] == "selection":
        values = [f["value"] for f in trial["frames"]]
        return {"trial": trial["key"], "choice": -1 if i % 5 == 0 else values[i % len(values)]}
    polys = []
    for q in range(1 + i % 2):
        cx, cy = rng.uniform(100, 400), rng.uniform(100, 400)
        pts = [[round(cx + 60 * np.cos(a), 2), round(cy + 60 * np.sin(a), 2)]
               for a in np.linspace(0, 2 * np.pi, 3 + (i + q) % 4, endpoint=False)]
        pts[0][0] = round(i + 0.25 + q, 2)  # makes every participant's polygon unique
        polys.append(pts)
    return {"trial": trial["key"], "polygons": polys}


def _check_export(url, expected: dict[str, dict[str, object]]):
    """The export holds each participant's answers exactly once and exactly as submitted."""
    status, text = admin(url, "/admin/export.csv")
    assert status == 200
    ex = read_export(io.StringIO(text))
    assert ex.issues == []
    assert sorted(ex.participant_ids) == sorted(expected)
    assert len(ex.participant_ids) == len(set(ex.participant_ids))
    n_sel = n_ann = 0
    for pid, answers in expected.items():
        for key, want in answers.items():
            kind, img = key.split(":")
            if kind == "sel":
                assert ex.selections[img][pid] == want, (pid, key)
                n_sel += 1
            else:
                assert [list(map(list, p.points)) for p in ex.polygons[img][pid]] == want, (pid, key)
                n_ann += 1
    assert sum(len(v) for v in ex.selections.values()) == n_sel
    assert sum(len(v) for v in ex.polygons.values()) == n_ann
    return ex


def test_fifty_participants_at_once(study_run, tmp_path):
    n, latencies, errors, expected = 50, [], [], {}
    lock = threading.Lock()

    def timed(method, url, body=None):
        t0 = time.perf_counter()
        status, r = request(method, url, body, timeout=30)
        with lock:
            latencies.append(time.perf_counter() - t0)
        return status, r

    def participant(i):
        try:
            rng = random.Random(i)
            status, r = timed("POST", srv.url + "/api/participants", {})
            assert status == 201, r
            tok = r["token"]
            status, state = timed("GET", f"{srv.url}/api/p/{tok}")
            mine = {}
            for _ in range(20):  # bounded: 6 trials
                if state["done"]:
                    break
                body = _answer_for(state["trial"], i, rng)
                mine[body["trial"]] = body.get("choice", body.get("polygons"))
                status, state = timed("POST", f"{srv.url}/api/p/{tok}/answer", body)
                assert status == 200, state
            assert state["done"] and state["answered"] == state["total"] == 6
            with lock:
                expected[state["participant"]] = mine
        except Exception as exc:  # reported by the main thread
            with lock:
                errors.append(f"participant {i}: {exc!r}")

    with StudyServer(study_run, tmp_path / "db.sqlite", "--threads", "8") as srv:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=participant, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, 120 - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        assert not any(t.is_alive() for t in threads), "participants still running after 120 s"
        assert errors == []
        assert len(expected) == n
        _check_export(srv.url, expected)
        status, prog = admin(srv.url, "/admin/progress")
        assert prog["participants"] == prog["finished"] == n
        p95 = float(np.percentile(latencies, 95))
        print(f"\n[load] {n} participants, {len(latencies)} requests in {wall:.2f} s: "
              f"p50 {1000 * np.percentile(latencies, 50):.1f} ms, p95 {1000 * p95:.1f} ms, "
              f"max {1000 * max(latencies):.1f} ms")
        assert p95 < 5.0


def test_restart_loses_nothing_and_the_participant_continues(study_run, tmp_path):
    db = tmp_path / "db.sqlite"
    acked, sent, stop, workers = {}, {}, threading.Event(), []
    srv = StudyServer(study_run, db, "--root-path", "/study")
    try:
        assert srv.url.endswith("/study")
        status, page = request("GET", srv.url + "/")
        assert status == 200 and 'content="/study"' in page and "/study/static/study.js" in page
        # Oversized bodies are refused by the real server too.
        tok = new_participant(srv.url)
        status, r = request("POST", f"{srv.url}/api/p/{tok}/answer", raw=b"[" * 400_000)
        assert status == 413
        status, state = request("GET", f"{srv.url}/api/p/{tok}")
        pid, mine, rng = state["participant"], {}, random.Random(7)
        given = []  # (trial JSON, body) of the answers given before the kill
        for _ in range(2):
            body = _answer_for(state["trial"], 3, rng)
            given.append((state["trial"], body))
            mine[body["trial"]] = body.get("choice", body.get("polygons"))
            status, state = request("POST", f"{srv.url}/api/p/{tok}/answer", body)
            assert status == 200
        next_trial = state["trial"]["key"]
        # Others are answering while the server is killed: what was acknowledged must survive.

        def busy(i):
            try:
                t = new_participant(srv.url)
                st = request("GET", f"{srv.url}/api/p/{t}")[1]
                r2 = random.Random(100 + i)
                while not stop.is_set() and not st["done"]:
                    b = _answer_for(st["trial"], 10 + i, r2)
                    key = (st["participant"], b["trial"])
                    sent[key] = b.get("choice", b.get("polygons"))
                    code, st = request("POST", f"{srv.url}/api/p/{t}/answer", b, timeout=5)
                    if code != 200:
                        return
                    acked[key] = sent[key]
            except (OSError, http.client.HTTPException, ValueError):
                return  # the server died mid-request (reset, cut-off body): it may or may not be stored

        workers = [threading.Thread(target=busy, args=(i,), daemon=True) for i in range(4)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 20
        while len(acked) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        srv.stop(kill=True)  # SIGKILL mid-request: no clean shutdown
    stop.set()
    for w in workers:
        w.join(timeout=10)
    assert srv.proc.returncode != 0 and len(acked) >= 6

    with StudyServer(study_run, db, "--root-path", "/study") as srv2:
        assert not any("warning" in line for line in srv2.lines)
        status, state = request("GET", f"{srv2.url}/api/p/{tok}")
        assert status == 200 and state["participant"] == pid
        assert state["answered"] == 2 and state["trial"]["key"] == next_trial
        # An answer given before the kill is there: giving it again differently is refused.
        trial, body = given[0]
        other = _answer_for(trial, 4, random.Random(8))
        assert other != body
        assert request("POST", f"{srv2.url}/api/p/{tok}/answer", other)[0] == 409
        # ...and the participant finishes where they left off.
        for _ in range(10):
            if state["done"]:
                break
            body = _answer_for(state["trial"], 3, rng)
            mine[body["trial"]] = body.get("choice", body.get("polygons"))
            status, state = request("POST", f"{srv2.url}/api/p/{tok}/answer", body)
            assert status == 200
        assert state["done"] and state["answered"] == 6
        status, text = admin(srv2.url, "/admin/export.csv")
        ex = read_export(io.StringIO(text))
        assert next(p for p in ex.participants if p.id == pid).submittedAt  # finished after the restart
        stored = {(p, "sel:" + img): c for img, t in ex.selections.items() for p, c in t.items()}
        stored.update({(p, "ann:" + img): [list(map(list, q.points)) for q in polys]
                       for img, t in ex.polygons.items() for p, polys in t.items()})
        for key, want in list(acked.items()) + [((pid, k), v) for k, v in mine.items()]:
            assert stored.get(key) == want, key  # every acknowledged answer, exactly
        for key, got in stored.items():  # nothing else but what was sent (in flight at the kill)
            assert got == (mine.get(key[1]) if key[0] == pid else sent[key]), key


def test_shipped_config_and_changed_studies(study_run, tmp_path):
    from study.serve.store import Store, StudyMismatch
    cfg = load_config(REPO / "configs" / "study" / "smiling.yaml")
    study = build_study([study_run], cfg)
    assert study.config["question"] == "Is this person smiling?" and study.display_size == 512
    store = Store(tmp_path / "db.sqlite")
    assert store.check_study(study.fingerprint(), 512) is None
    assert store.check_study(study.fingerprint(), 512) is None  # a restart of the same study
    assert "differ" in store.check_study("another", 512)  # answers are kept, with a warning
    with pytest.raises(StudyMismatch, match="512 px"):
        store.check_study(study.fingerprint(), 384)


def test_catch_trials_are_scored_and_kept_out_of_the_image_answers(client):
    tok = _start(client)
    plan_keys = set()
    for _ in range(10):
        state = client.get(f"/api/p/{tok}").get_json()
        if state["done"]:
            break
        t = state["trial"]
        plan_keys.add(t["key"])
        if t["kind"] == "selection":
            body = {"trial": t["key"], "choice": -1 if t["key"] == "catch:0" else t["frames"][1]["value"]}
        else:
            body = {"trial": t["key"], "polygons": [[[10, 10], [200, 10], [100, 150]]]}
        assert _answer(client, tok, body).status_code == 200
    assert state["done"] and "catch:0" in plan_keys and state["total"] == 7
    prog = client.get("/admin/progress", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json()
    assert prog["per_participant"][0]["catch_passed"] == prog["per_participant"][0]["catch_total"] == 1
    text = client.get("/admin/export.csv", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_data(as_text=True)
    ex = read_export(io.StringIO(text))
    assert ex.issues == [] and len(ex.participants) == 1 and ex.participants[0].submittedAt
    assert sum(len(v) for v in ex.selections.values()) == 3 and "ImageSelection/catch" not in text
    # Changed with issue 28: the catch score is exported (Study/ columns), not kept apart.
    info = ex.info[ex.participants[0].id]
    assert info["catch_passed"] == info["catch_total"] == "1"
