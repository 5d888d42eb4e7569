import itertools
import json
from pathlib import Path

import pytest

from homegrown.config import IngestConfig, apply_overrides, get_preset
from homegrown.data.ingest import split_of
from homegrown.data.sources import iter_corpus
from homegrown.pipeline import SAMPLE_DIR, run

PAGE = "<html><head><title>{t}</title></head><body><main><h1>{t}</h1><p>{body}</p></main></body></html>"


def _real_texts(n):
    """Real prose from the bundled corpus: ingest's quality rules reject made-up repetitive text, as they should."""
    return [r["text"][:3000].replace("\n", "</p><p>") for r in itertools.islice(iter_corpus(SAMPLE_DIR, "train"), n)]


@pytest.mark.usefixtures("ray_session")  # its ingest runs on the session's local Ray
def test_run_on_a_user_source_directory(tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    # The train/val split hashes each page's URL, which holds tmp_path; pick file names so that 4 pages are
    # held out wherever pytest puts the directory (3 of these texts fail quality rules, so val is never empty).
    names, held_out = [], 0
    for j in itertools.count():
        split = split_of(f"{src.resolve().as_uri()}/page{j}.html", IngestConfig().holdout_fraction)
        if (split == "val" and held_out < 4) or (split == "train" and len(names) - held_out < 36):
            names.append(f"page{j}.html")
            held_out += split == "val"
        if len(names) == 40:
            break
    for name, body in zip(names, _real_texts(40), strict=True):
        (src / name).write_text(PAGE.format(t=f"Page {name[4:-5]}", body=body))
    preset = apply_overrides(get_preset("tiny"), [f"data.source={src}", "data.source_licence=CC0-1.0",
                                                  "train.max_steps=6", "train.eval_every=6", "train.threads=1",
                                                  "data.source_glob=*.html", "sft.max_steps=4", "sft.eval_every=4",
                                                  # which pages are train depends on tmp_path (split by URL
                                                  # hash): a 128-token context fits a derived conversation
                                                  # whichever they are; 64 sometimes fitted none
                                                  "model.max_seq_len=128", "train.seq_len=128"])
    summary = run(preset, tmp_path / "run", samples=1, progress=False)
    records = list(iter_corpus(tmp_path / "run" / "corpus", "train"))
    assert records and all(r["licence"] == "CC0-1.0" and r["source"].startswith("file://") for r in records)
    assert summary.base_checkpoint.name == "step_6" and len(summary.samples) == 1
    assert summary.checkpoint == tmp_path / "run" / "sft" / "ckpt" / "step_4"  # chat data derived from the pages
    assert summary.report == tmp_path / "run" / "report.md" and "run/sft" in summary.report.read_text()
    base = next(m for m in json.loads((tmp_path / "run" / "report.json").read_text())["models"] if m["stage"] == "base")
    assert (summary.val_bpb, summary.val_loss) == (base["val"]["bpb"], base["val"]["loss"]), "one figure per claim"


@pytest.mark.usefixtures("ray_session")
def test_run_skips_sft_when_no_conversation_fits_the_context(tmp_path, monkeypatch):
    src = tmp_path / "site"
    src.mkdir()
    for j, body in enumerate(_real_texts(12)):
        (src / f"p{j}.html").write_text(PAGE.format(t=f"Page {j}", body=body))
    # 16 tokens hold no question with its whole answer; a small site still gets a val page (ingest's split rule)
    preset = apply_overrides(get_preset("tiny"), [f"data.source={src}", "data.source_glob=*.html", "train.max_steps=2",
                                                  "train.eval_every=2", "train.threads=1", "model.max_seq_len=16",
                                                  "train.seq_len=16", "sft.max_steps=2", "eval.max_items=2"])
    monkeypatch.chdir(tmp_path)  # a relative run directory, as `make run` passes runs/<preset>
    summary = run(preset, Path("run"), samples=0, progress=False)
    assert summary.checkpoint.resolve() == summary.base_checkpoint.resolve() == tmp_path / "run" / "ckpt" / "step_2"
    base = next(m for m in json.loads((tmp_path / "run" / "report.json").read_text())["models"] if m["stage"] == "base")
    assert summary.val_bpb == base["val"]["bpb"]
    assert not (tmp_path / "run" / "sft" / "ckpt").exists() and summary.report.exists()
    assert json.loads((tmp_path / "run" / "corpus" / "MANIFEST.json").read_text())["val_pages"] >= 1


def test_data_ingest_cli(cli, tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    body, other = _real_texts(2)
    (src / "a.html").write_text(PAGE.format(t="A", body=body))
    (src / "b.html").write_text(PAGE.format(t="A", body=body))  # exact duplicate text of a.html
    (src / "c.html").write_text(PAGE.format(t="C", body=other))
    out = cli("data", "ingest", str(src), "--out", str(tmp_path / "corpus"), "--licence", "MIT",
              "--url-prefix", "https://example.org/")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "corpus" / "MANIFEST.json").read_text())
    assert manifest["kept"] == 2 and manifest["dropped_duplicate"] == 1
