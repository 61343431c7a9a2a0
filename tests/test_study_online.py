"""Issue 28: the study app for a real online study. The bugs found by hand (each test here failed
before its fix), recruitment-panel links, completion codes, screening out, withdrawal, the
``Study/…`` export columns (status, panel, catch score, timings) and the evaluation's exclusions.
The browser side is in test_study_browser.py."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from dvce import runfolder
from study import read_export
from study.serve.design import StudyConfigError, build_study, load_config
from tests.study_server import ADMIN_TOKEN, REPO, StudyServer, request
from tests.test_study_serve import _fake_run

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PANEL = "PROLIFIC_PID=5f0c8e2a9b1d4c3e2f1a0b9c&STUDY_ID=study42&SESSION_ID=sess7&utm_source=mail"


def _app(run, tmp_path, yaml_text=""):
    from study.serve.app import create_app
    from study.serve.store import Store
    (tmp_path / "s.yaml").write_text(yaml_text)
    study = build_study([run], load_config(tmp_path / "s.yaml"))
    store = Store(tmp_path / "db.sqlite")
    store.check_study(study.fingerprint(), study.display_size)
    c = create_app(study, store, ADMIN_TOKEN).test_client()
    c.study, c.store = study, store
    return c


@pytest.fixture
def online(study_run, tmp_path):
    img = runfolder.list_items(study_run)[0].image_id
    return _app(study_run, tmp_path, (
        "frames: 4\nrandomize: false\n"
        f"catch_trials: [{{image: '{img}', frames: [0, 0, 0], expect: -1}}]\n"
        "completion: {code: DONE123, url: 'https://panel.example/complete?cc=DONE123'}\n"
        "screened_out: {code: OUT456, url: 'https://panel.example/complete?cc=OUT456'}\n"
        "max_failed_catch: 0\n"))


@pytest.fixture
def plain(study_run, tmp_path):
    """A study with only the keys the app had before issue 28 (so the bug tests ran before it)."""
    img = runfolder.list_items(study_run)[0].image_id
    return _app(study_run, tmp_path, f"frames: 4\ncatch_trials: [{{image: '{img}', frames: [0, 0, 0], expect: -1}}]\n")


def _register(c, query="", **body):
    r = c.post("/api/participants" + (f"?{query}" if query else ""), json=body)
    return r.status_code, r.get_json()


def _state(c, tok):
    return c.get(f"/api/p/{tok}").get_json()


def _body(trial, catch_ok=True):
    if trial["kind"] == "selection":
        if trial["key"].startswith("catch:"):
            return {"trial": trial["key"], "choice": -1 if catch_ok else 0}
        return {"trial": trial["key"], "choice": trial["frames"][1]["value"]}
    return {"trial": trial["key"], "polygons": [[[10, 10], [200, 10], [100, 150]]]}


def _finish(c, tok, catch_ok=True):
    for _ in range(20):
        st = _state(c, tok)
        if st["done"] or st["trial"] is None:  # the end, or the questionnaire
            return st
        r = c.post(f"/api/p/{tok}/answer", json=_body(st["trial"], catch_ok))
        assert r.status_code == 200, r.get_json()
    raise AssertionError("never done")


def _export(c):
    text = c.get("/admin/export.csv", headers=AUTH).get_data(as_text=True)
    return read_export(io.StringIO(text)), text


# ------------------------------------------------------------------------------------ bugs 1-8
def test_bug1_relative_run_folder_serves_every_image(study_run, tmp_path, monkeypatch):
    monkeypatch.chdir(study_run.parent)
    c = _app(study_run.relative_to(study_run.parent), tmp_path)
    img = c.study.selection_images[0]
    for k in c.study.images[img].shown_indices:
        assert c.get(f"/img/{img}/frame/{k}").status_code == 200
    assert c.get(f"/img/{c.study.annotation_images[0]}/original").status_code == 200


def test_bug1_missing_frames_refuse_to_start(tmp_path):
    run = _fake_run(tmp_path / "run", ["10", "11"])
    next((run / "11").glob("**/*2.png")).unlink()  # a frame in the middle of the sequence
    with pytest.raises(StudyConfigError, match="frame images are missing"):
        build_study([run])


def test_bug4_unknown_or_cut_link_is_a_page(plain):
    tok = _register(plain)[1]["token"]
    for path in (f"/p/{tok[:-5]}", "/p/" + "A" * 32, "/p/x"):
        r = plain.get(path)
        assert r.status_code == 404 and r.mimetype == "text/html", path
        assert "does not lead to a study session" in r.get_data(as_text=True)
    assert plain.get(f"/api/p/{'A' * 32}").get_json()["error"]  # the API still answers JSON


def test_bug5_a_stale_answer_says_which_one_was_kept(plain):
    tok = _register(plain)[1]["token"]
    t = _state(plain, tok)["trial"]
    first = {"trial": t["key"], "choice": t["frames"][2]["value"]}
    assert plain.post(f"/api/p/{tok}/answer", json=first).status_code == 200
    r = plain.post(f"/api/p/{tok}/answer", json={"trial": t["key"], "choice": -1})  # the other browser
    body = r.get_json()
    assert r.status_code == 409 and body["kept"] == {**first, "position": 3}
    assert body["state"]["answered"] == 1 and body["state"]["trial"]["key"] != t["key"]


def test_bug6_answers_only_in_order_and_polygons_with_area(plain):
    tok = _register(plain)[1]["token"]
    ann = plain.study.annotation_images[0]
    square = [[[10, 10], [100, 10], [100, 100], [10, 100]]]
    r = plain.post(f"/api/p/{tok}/answer", json={"trial": f"ann:{ann}", "polygons": square})
    assert r.status_code == 409 and "not the current one" in r.get_json()["error"]
    assert plain.store.all_answers() == []
    while (t := _state(plain, tok)["trial"])["kind"] == "selection":
        assert plain.post(f"/api/p/{tok}/answer", json=_body(t)).status_code == 200
    for polys in ([[[50, 50], [50, 50], [50, 50]]], [[[10, 10], [20, 20], [30, 30]]], square + [[[5, 5]] * 3]):
        r = plain.post(f"/api/p/{tok}/answer", json={"trial": t["key"], "polygons": polys})
        assert r.status_code == 400 and "encloses no area" in r.get_json()["error"]
    assert plain.post(f"/api/p/{tok}/answer", json={"trial": t["key"], "polygons": square}).status_code == 200


def test_bug8_oversized_body_gets_json_from_the_real_server(study_run, tmp_path):
    with StudyServer(study_run, tmp_path / "db.sqlite") as srv:
        status, r = request("POST", srv.url + "/api/participants", {"consent": True})
        status, r = request("POST", f"{srv.url}/api/p/{r['token']}/answer", raw=b"[" * 400_000)
        assert status == 413 and "too large" in r["error"]


# ------------------------------------------------------------------------------------ panel
def test_panel_parameters_are_stored_exported_and_resume(online):
    status, r = _register(online, PANEL)
    assert status == 201 and r["resumed"] is False
    tok = r["token"]
    pid = _state(online, tok)["participant"]
    # The same panel member again (another device, the link clicked twice): the same participant.
    status, r2 = _register(online, "PROLIFIC_PID=5f0c8e2a9b1d4c3e2f1a0b9c&SESSION_ID=sess8")
    assert status == 200 and r2["resumed"] is True and _state(online, r2["token"])["participant"] == pid
    status, r3 = _register(online, consent=True, PROLIFIC_PID="5f0c8e2a9b1d4c3e2f1a0b9c")  # as body fields
    assert status == 200 and _state(online, r3["token"])["participant"] == pid
    assert _state(online, tok)["participant"] == pid  # the first link still works
    assert len(online.store.participants()) == 1
    _finish(online, tok)
    ex, text = _export(online)
    assert ex.info[pid]["panel/PROLIFIC_PID"] == "5f0c8e2a9b1d4c3e2f1a0b9c"
    assert ex.info[pid]["panel/STUDY_ID"] == "study42" and ex.info[pid]["panel/SESSION_ID"] == "sess7"
    assert "utm_source" not in text and ex.issues == []


@pytest.mark.parametrize("query, body, match", [
    ("PROLIFIC_PID=<script>", {}, "PROLIFIC_PID must be"),
    ("", {"PROLIFIC_PID": 5}, "PROLIFIC_PID must be"),
    ("", {"nickname": "x"}, "unknown field"),
    ("PROLIFIC_PID=" + "a" * 129, {}, "PROLIFIC_PID must be"),
])
def test_bad_panel_parameters_are_refused(online, query, body, match):
    status, r = _register(online, query, **body)
    assert status == 400 and match in r["error"]
    assert online.store.participants() == []


# ------------------------------------------------------------------------------------ completion
def test_completion_code_and_screened_out_variant(online):
    done = _finish(online, _register(online)[1]["token"])
    assert done["status"] == "finished" and done["completion"]["code"] == "DONE123"
    tok = _register(online)[1]["token"]
    for _ in range(10):  # fail the catch trial: the study ends there
        st = _state(online, tok)
        if st["done"]:
            break
        assert online.post(f"/api/p/{tok}/answer", json=_body(st["trial"], catch_ok=False)).status_code == 200
    assert st["status"] == "screened_out" and st["completion"] == online.study.config["screened_out"]
    assert st["answered"] < st["total"] and st["trial"] is None
    ex, _ = _export(online)
    out = [p for p in ex.info.values() if p["status"] == "screened_out"]
    assert all(p["catch_passed"] == "0" and p["catch_total"] == "1" for p in out)


@pytest.mark.parametrize("yaml_text, match", [
    ("completion: {code: X, url: 'javascript:alert(1)'}\n", "http"),
    ("completion: {link: x}\n", "completion"),
    ("completion: {code: X, redirect: true}\n", "redirect needs the url"),
    ("screened_out: {url: 'https://x.org', redirect: 'yes'}\n", "screened_out"),
    ("panel_id_param: PID\n", "panel_id_param"),
    ("panel_params: ['a b']\n", "panel_params"),
    ("max_failed_catch: -1\n", "max_failed_catch"),
])
def test_bad_online_config_is_refused(tmp_path, yaml_text, match):
    (tmp_path / "s.yaml").write_text(yaml_text)
    with pytest.raises(StudyConfigError, match=match):
        load_config(tmp_path / "s.yaml")


# ------------------------------------------------------------------------------------ withdrawal
def test_withdraw_by_admin_and_cli(online, tmp_path):
    a = _register(online, "PROLIFIC_PID=aaa111")[1]["token"]
    b = _register(online)[1]["token"]
    pa, pb = _finish(online, a)["participant"], _finish(online, b)["participant"]
    n_b = len(online.store.answered(pb))
    for body, code in (({}, 400), ({"participant": "nobody"}, 404), ({"participant": pa, "reason": ""}, 400)):
        assert online.post("/admin/withdraw", json=body, headers=AUTH).status_code == code
    assert online.post("/admin/withdraw", json={"participant": pa}).status_code == 401
    r = online.post("/admin/withdraw", json={"participant": pa, "reason": "asked by e-mail"}, headers=AUTH)
    assert r.status_code == 200 and r.get_json()["answers_removed"] > 0
    assert online.store.answered(pa) == {} and len(online.store.answered(pb)) == n_b
    ex, _ = _export(online)
    assert ex.participant_ids == [pb]
    # The withdrawn panel member cannot start again, and their old link takes nothing more.
    status, r = _register(online, "PROLIFIC_PID=aaa111")
    assert status == 403 and "withdrew" in r["error"]
    assert _state(online, a)["status"] == "withdrawn"
    prog = online.get("/admin/progress", headers=AUTH).get_json()
    assert [(w["participant_id"], w["reason"]) for w in prog["withdrawals"]] == [(pa, "asked by e-mail")]
    # The command line does the same on the database file.
    online.store.close()
    cmd = [sys.executable, "-m", "ldvce.cli", "study", "withdraw", "--db", str(tmp_path / "db.sqlite")]
    r = subprocess.run(cmd + [pb, "--reason", "no consent"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"{n_b} answer(s) removed" in r.stdout, r.stderr
    r = subprocess.run(cmd + ["nobody"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no participant with id 'nobody'" in r.stderr
    assert _export(online)[0].participant_ids == []
    assert [w["reason"] for w in online.store.withdrawals()] == ["asked by e-mail", "no consent"]


# ------------------------------------------------------------------------------------ timings
def test_timings_per_trial_in_the_export(online):
    tok = _register(online)[1]["token"]
    pid = _finish(online, tok)["participant"]
    ex, _ = _export(online)
    info = ex.info[pid]
    plan = [k for k in online.store.participants()[0].plan]
    for k in plan:
        shown, answered = info[f"trial/{k}/shown"], info[f"trial/{k}/answered"]
        assert shown <= answered and float(info[f"trial/{k}/seconds"]) >= 0
    assert float(info["total_seconds"]) >= max(float(info[f"trial/{k}/seconds"]) for k in plan)
    assert info["status"] == "finished" and info["catch_passed"] == info["catch_total"] == "1"


def test_old_database_is_migrated(study_run, tmp_path):
    import sqlite3

    from study.serve.store import Store
    db = tmp_path / "old.sqlite"
    c = sqlite3.connect(db)  # schema 1, as the previous version made it
    c.executescript("CREATE TABLE participants (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, "
                    "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, submitted_at TEXT, consent_at TEXT, "
                    "plan TEXT NOT NULL);"
                    "CREATE TABLE answers (participant_id TEXT NOT NULL, trial TEXT NOT NULL, kind TEXT NOT NULL, "
                    "image_id TEXT NOT NULL, choice INTEGER, polygons TEXT, answered_at TEXT NOT NULL, "
                    "PRIMARY KEY (participant_id, trial));"
                    "INSERT INTO participants VALUES ('p1', 'h', 't0', 't1', NULL, NULL, '[\"sel:1\"]');"
                    "INSERT INTO answers VALUES ('p1', 'sel:1', 'selection', '1', 3, NULL, 't1');")
    c.commit()
    c.close()
    store = Store(db)
    (p,) = store.participants()
    assert p.id == "p1" and p.panel == {} and p.withdrawn_at is None
    assert store.all_answers()[0]["choice"] == 3


def test_withdraw_command_is_registered():
    r = subprocess.run([sys.executable, "-m", "ldvce.cli", "study", "withdraw", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--db" in r.stdout and "record" in r.stdout


# ------------------------------------------------------------------------------------ evaluation
def _eval_export(tmp_path):
    """An export as the server writes it: 5 participants, two conditions, catch scores, timings."""
    from study import write_export
    sel = {"100": {"a": 2, "b": -1, "c": 3, "d": -1, "e": 1}, "101": {"a": 4, "b": 4, "c": -1, "d": 2, "e": 0}}
    tri = [[10, 10], [200, 10], [100, 150]]
    polys = {"100": {p: [tri] for p in "abcde"}}
    people = [{"id": p, "submittedAt": "" if p == "d" else "2026-01-01T00:00:00.000Z"} for p in "abcde"]
    info = {p: {"status": "running" if p == "d" else "finished", "condition": "guided" if p in "ab" else "plain",
                "catch_passed": 0 if p == "c" else 1, "catch_total": 1,
                "trial/sel:100/seconds": 4.0 + i, "trial/ann:100/seconds": 20.0 + i, "total_seconds": 60.0 + i}
            for i, p in enumerate("abcde")}
    path = tmp_path / "export.csv"
    write_export(path, sel, polys, people, info=info)
    return path


def test_eval_excludes_and_says_who_and_why(tmp_path, capsys):
    from study.evalstudy import main
    export = _eval_export(tmp_path)
    (tmp_path / "excl.txt").write_text("# excluded by hand\ne, spoke to a friend during the study <b>\nzz\n")
    out = tmp_path / "out"
    rc = main(["--export", str(export), "--out", str(out), "--no-figures", "--bootstrap", "0", "--finished-only",
               "--exclude-failed-catch", "--exclude-file", str(tmp_path / "excl.txt")])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "study_summary.json").read_text())
    assert s["participant_ids"] == ["a", "b"]
    assert {e["id"]: e["reason"] for e in s["excluded"]} == {
        "c": "failed catch trials (0 of 1 passed)", "d": "did not finish (no submittedAt)",
        "e": f"listed in {tmp_path / 'excl.txt'}: spoke to a friend during the study <b>",
        "zz": f"listed in {tmp_path / 'excl.txt'} but not in the export"}
    page = (out / "report.html").read_text()
    assert "study &lt;b&gt;" in page and "study <b>" not in page  # the list's text is escaped in HTML
    md = (out / "report.md").read_text()
    assert "## Exclusions" in md and "failed catch trials (0 of 1 passed)" in md and "spoke to a friend" in md
    assert s["timings"]["trial_seconds"]["selection"]["median"] == 4.5  # a and b only
    assert s["timings"]["total_seconds"]["max"] == 61.0 and "## Timings" in md
    assert "excluded 4 participant(s)" in capsys.readouterr().out


def test_eval_exclusions_fail_clearly(tmp_path):
    from study import write_export
    from study.evalstudy import main
    plain = tmp_path / "plain.csv"  # the original app's export: no catch columns
    write_export(plain, {"100": {"a": 1}}, {}, ["a"])
    assert main(["--export", str(plain), "--out", str(tmp_path / "o"), "--exclude-failed-catch", "--no-figures"]) == 2
    assert main(["--export", str(plain), "--out", str(tmp_path / "o"), "--exclude-file", str(tmp_path / "no.txt"),
                 "--no-figures"]) == 2


def test_eval_per_condition_and_mean_frame_without_none(tmp_path):
    from study.evalstudy import main
    export = _eval_export(tmp_path)
    out = tmp_path / "out"
    assert main(["--export", str(export), "--out", str(out), "--no-figures", "--bootstrap", "0"]) == 0
    s = json.loads((out / "study_summary.json").read_text())
    assert set(s["conditions"]) == {"guided", "plain"}
    g, p = s["conditions"]["guided"], s["conditions"]["plain"]
    assert g["participants"] == 2 and p["participants"] == 3
    assert g["mean_frame"] == pytest.approx((2 + 4 + 4) / 3) and g["none_share"] == pytest.approx(0.25)
    assert p["per_image"]["100"] == {"n": 3, "mean_frame": 2.0, "none": 1, "agreement": p["per_image"]["100"]["agreement"]}
    md = (out / "report.md").read_text()
    assert "## Conditions" in md and "| guided | 2 |" in md
    # Bug 8: the report's mean over image 100 (choices 2, -1, 3, -1, 1) is of the frames, not of -1 too.
    sel_part = md.split("## Selection task")[1]
    row = next(line for line in sel_part.splitlines() if line.startswith("| 100 |"))
    assert "| 2.00 |" in row and "| 0.80 |" not in row


# ------------------------------------------------------------------------------------ conditions
def test_conditions_are_balanced_served_exported_and_evaluated(tmp_path):
    from study.evalstudy import main
    from study.serve.app import create_app
    from study.serve.design import build_studies
    from study.serve.store import Store
    a = _fake_run(tmp_path / "a", ["10", "11"], n_frames=6, switch=3)
    b = _fake_run(tmp_path / "b", ["10", "11"], n_frames=9, switch=7)  # same ids, another sampler
    (tmp_path / "s.yaml").write_text(f"randomize: false\nconditions:\n  - {{name: guided, runs: ['{a}']}}\n"
                                     f"  - {{name: plain, runs: ['{b}']}}\n")
    cfg = load_config(tmp_path / "s.yaml")
    with pytest.raises(StudyConfigError, match="give no RUN_DIR"):
        build_studies([a], cfg)
    studies = build_studies([], cfg)
    c = create_app(studies, Store(tmp_path / "db.sqlite"), ADMIN_TOKEN).test_client()
    toks = [_register(c)[1]["token"] for _ in range(5)]
    conds = [p.condition for p in c.application.extensions["ldvce_study"].store.participants()]
    assert conds == ["guided", "plain", "guided", "plain", "guided"]  # balanced, in config order
    st = _state(c, toks[1])  # a "plain" participant sees the 9-frame run, with the condition in the URL
    assert [f["url"].split("?")[1] for f in st["trial"]["frames"]] == ["c=plain"] * 9
    assert c.get("/img/10/frame/8?c=plain").status_code == 200
    assert c.get("/img/10/frame/8?c=guided").status_code == 404 and c.get("/img/10/frame/8").status_code == 404
    r = c.post(f"/api/p/{toks[0]}/answer", json={"trial": st["trial"]["key"], "choice": 8})
    assert r.status_code == 400  # frame 8 is not in the guided run
    choices = {0: 3, 1: 7, 2: -1, 3: 8, 4: 4}
    for i, tok in enumerate(toks):
        while not (s := _state(c, tok))["done"]:
            t = s["trial"]
            body = ({"trial": t["key"], "choice": choices[i]} if t["kind"] == "selection"
                    else {"trial": t["key"], "polygons": [[[10, 10], [200, 10], [100, 150]]]})
            assert c.post(f"/api/p/{tok}/answer", json=body).status_code == 200
    export = tmp_path / "export.csv"
    export.write_text(c.get("/admin/export.csv", headers=AUTH).get_data(as_text=True))
    ex = read_export(export)
    assert [ex.info[p]["condition"] for p in ex.participant_ids] == conds
    out = tmp_path / "out"
    assert main(["--export", str(export), "--out", str(out), "--no-figures", "--bootstrap", "0",
                 "--runs", f"guided={a}", "--runs", f"plain={b}"]) == 0
    s = json.loads((out / "study_summary.json").read_text())
    g, p = s["conditions"]["guided"], s["conditions"]["plain"]
    assert g["participants"] == 3 and p["participants"] == 2
    assert g["mean_frame"] == pytest.approx(3.5) and g["none_share"] == pytest.approx(1 / 3)
    assert g["per_image"]["10"]["agreement"]["switch_frame"] == 3 and p["per_image"]["10"]["agreement"]["switch_frame"] == 7
    assert g["per_image"]["10"]["agreement"]["exact"] == pytest.approx(1 / 3)  # one of three chose 3
    assert p["per_image"]["10"]["agreement"]["exact"] == pytest.approx(1 / 2)  # one of two chose 7
    assert "## Conditions" in (out / "report.md").read_text()


# ------------------------------------------------------------------------------------ counterbalancing
@pytest.mark.parametrize("placement", ["start", "end", "spread", "random"])
def test_block_order_and_catch_placement(tmp_path, placement):
    run = _fake_run(tmp_path / "run", ["10", "11", "12", "13"])
    (tmp_path / "s.yaml").write_text(
        f"block_order: random\ncatch_placement: {placement}\n"
        "catch_trials: [{image: '10', frames: [0, 0], expect: -1}, {image: '11', frames: [1, 1], expect: -1}]\n")
    study = build_study([run], load_config(tmp_path / "s.yaml"))
    plans = [study.plan(str(i)) for i in range(40)]
    firsts = {p[0].split(":")[0] for p in plans}
    assert firsts >= {"ann", "sel"} or firsts >= {"ann", "catch"}  # both block orders occur
    for p in plans:
        sel = [k for k in p if not k.startswith("ann:")]
        where = [i for i, k in enumerate(sel) if k.startswith("catch:")]
        assert len(sel) == 6 and len(where) == 2
        if placement == "start":
            assert where == [0, 1]
        elif placement == "end":
            assert where == [4, 5]
        elif placement == "spread":
            assert where == [1, 4]  # evenly between the four selection trials
    if placement == "random":
        assert len({tuple(i for i, k in enumerate(p) if k.startswith("catch:")) for p in plans}) > 3
    with pytest.raises(StudyConfigError, match="catch_placement"):
        (tmp_path / "bad.yaml").write_text("catch_placement: middle\n")
        load_config(tmp_path / "bad.yaml")


# ------------------------------------------------------------------------------------ questionnaire, texts
QUESTIONS = ("questionnaire:\n"
             "  - {name: age, type: number, label: Your age, min: 18, max: 99}\n"
             "  - {name: hand, type: choice, label: Handedness, options: [left, right], required: true}\n"
             "  - {name: feedback, type: text, label: Comments, max_length: 40}\n")


def test_questionnaire_is_validated_stored_and_exported(study_run, tmp_path):
    c = _app(study_run, tmp_path, "frames: 4\ncompletion: {code: DONE1}\n" + QUESTIONS)
    tok = _register(c)[1]["token"]
    q = lambda body: c.post(f"/api/p/{tok}/questionnaire", json=body)  # noqa: E731
    assert q({"answers": {"hand": "left"}}).status_code == 409  # trials first
    st = _finish(c, tok)  # the trials are done: the questionnaire comes before the end page
    assert not st["done"] and [x["name"] for x in st["questionnaire"]] == ["age", "hand", "feedback"]
    assert st["completion"] is None
    for body, match in (({"answers": {"hand": "up"}}, "one of the options"), ({"answers": {"age": 30}}, "Handedness"),
                        ({"answers": {"hand": "left", "age": 12}}, "between 18 and 99"),
                        ({"answers": {"hand": "left", "age": "30"}}, "must be a number"),
                        ({"answers": {"hand": "left", "feedback": "x" * 41}}, "at most 40"),
                        ({"answers": {"hand": "left", "email": "a@b"}}, "unknown question"), ({"hand": "left"}, "answers")):
        r = q(body)
        assert r.status_code == 400 and match in r.get_json()["error"], (body, r.get_json())
    good = {"answers": {"hand": "left", "age": 31, "feedback": "=HYPERLINK(\"x\") <script>alert(1)</script>"[:40]}}
    r = q(good)
    assert r.status_code == 200 and r.get_json()["done"] and r.get_json()["completion"] == {"code": "DONE1"}
    assert q(good).status_code == 200 and q({"answers": {"hand": "right"}}).status_code == 409
    ex, _ = _export(c)
    info = ex.info[ex.participant_ids[0]]
    assert info["q/hand"] == "left" and info["q/age"] == "31" and "q/feedback" in info
    assert info["q/feedback"].startswith("'=HYPERLINK")  # a spreadsheet shows it as text, never runs it
    prog = c.get("/admin/progress", headers=AUTH).get_json()
    assert prog["finished"] == 1


def test_texts_and_language_come_from_the_config(study_run, tmp_path):
    c = _app(study_run, tmp_path, "language: de\ntexts: {submit: Absenden, link_not_found: Dieser Link führt nirgends hin.}\n")
    info = c.get("/api/study").get_json()
    assert info["texts"]["submit"] == "Absenden" and info["texts"]["start"] == "Start the study"
    page = c.get("/").get_data(as_text=True)
    assert '<html lang="de">' in page
    r = c.get("/p/" + "B" * 30)
    assert r.status_code == 404 and "Dieser Link führt nirgends hin." in r.get_data(as_text=True)
    for text, match in (("texts: {sbumit: x}\n", "unknown text"), ("texts: {submit: ''}\n", "non-empty"),
                        ("language: 'de DE'\n", "language"), (QUESTIONS.replace("type: number", "type: date"), "type"),
                        ("questionnaire: [{name: a, type: choice, label: A, options: [x]}]\n", "options")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(StudyConfigError, match=match):
            load_config(tmp_path / "bad.yaml")


def test_shipped_online_config_loads():
    cfg = load_config(REPO / "configs" / "study" / "online.yaml")
    assert cfg["completion"]["code"] and [c["name"] for c in cfg["conditions"]] == ["guided", "plain"]
    assert load_config(REPO / "configs" / "study" / "smiling.yaml")["catch_placement"] == "random"
