import gzip
import json

from homegrown.config import apply_overrides, get_preset
from homegrown.pipeline import run

PAGE = "<html><head><title>{t}</title></head><body><main><h1>{t}</h1><p>{body}</p></main></body></html>"


def test_run_on_a_user_source_directory(tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    for i in range(40):
        body = " ".join(f"Paragraph {i} sentence {j} explains how package {i * j} is configured." for j in range(30))
        (src / f"page{i}.html").write_text(PAGE.format(t=f"Page {i}", body=body))
    preset = apply_overrides(get_preset("tiny"), [f"data.source={src}", "data.source_licence=CC0-1.0",
                                                  "train.max_steps=6", "train.eval_every=6", "train.threads=1",
                                                  "data.source_glob=*.html"])
    summary = run(preset, tmp_path / "run", samples=1, progress=False)
    with gzip.open(tmp_path / "run" / "corpus" / "train.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    assert records and all(r["licence"] == "CC0-1.0" and r["source"].startswith("file://") for r in records)
    assert summary.checkpoint.name == "step_6" and len(summary.samples) == 1


def test_data_ingest_cli(cli, tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    body = " ".join(f"Sentence {j} of a page about Debian networking." for j in range(40))
    (src / "a.html").write_text(PAGE.format(t="A", body=body))
    (src / "b.html").write_text(PAGE.format(t="A", body=body))  # exact duplicate text of a.html
    (src / "c.html").write_text(PAGE.format(t="C", body=body.replace("Debian", "Python")))
    out = cli("data", "ingest", str(src), "--out", str(tmp_path / "corpus"), "--licence", "MIT",
              "--url-prefix", "https://example.org/")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "corpus" / "MANIFEST.json").read_text())
    assert manifest["kept"] == 2 and manifest["dropped_duplicate"] == 1
