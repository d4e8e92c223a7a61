"""`convert` writes atomically (engine/atomic.py): OUT is always the complete old conversion or the complete new one,
also when the process is killed at any point of the write; --force replaces an earlier conversion as a whole
(no old tokenizer file survives) and never deletes files engine did not write."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine
from engine import atomic
from engine.convert import ENGINE_FILES, convert
from engine.__main__ import main as cli
from models_util import inputs, make_hf

ATOMIC_PY = Path(atomic.__file__)


def snapshot(d: Path) -> dict[str, str]:
    """name -> sha256 of every entry of a folder (what a reader would find there)."""
    return {p.name + ("/" if p.is_dir() else ""): "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.iterdir())}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.engine-"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A BERT folder with a WordPiece tokenizer, and a RoBERTa folder with no tokenizer files."""
    root = tmp_path_factory.mktemp("src")
    make_hf("BertForSequenceClassification").save_pretrained(root / "bert")
    (root / "bert" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]) + "\n")
    (root / "bert" / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    make_hf("RobertaForSequenceClassification").save_pretrained(root / "roberta")
    return root / "bert", root / "roberta"


def test_force_replaces_every_file_of_the_old_conversion(sources, tmp_path):
    bert, roberta = sources
    out = tmp_path / "out"
    convert(bert, out, progress=False)
    assert {"vocab.txt", "tokenizer_config.json"} <= set(snapshot(out))
    with pytest.raises(FileExistsError, match="not empty; pass --force"):
        convert(roberta, out, progress=False)
    convert(roberta, out, force=True, progress=False)
    assert set(snapshot(out)) == {"config.json", "model.safetensors"}  # the BERT vocabulary is gone
    x = inputs("RobertaForSequenceClassification")
    with torch.no_grad():
        ref = make_hf("RobertaForSequenceClassification")(**x).logits
    got = engine.from_pretrained(out)(**x)
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-4
    assert siblings(out) == []  # no temporary folder left behind


def test_force_never_deletes_files_engine_did_not_write(sources, tmp_path, capsys):
    bert, roberta = sources
    out = tmp_path / "out"
    convert(bert, out, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    before = snapshot(out)
    assert cli(["convert", str(roberta), str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files engine did not write (notes.txt, runs/)" in err
    assert snapshot(out) == before
    hf_like = tmp_path / "hf_like"  # a model folder that is not engine's (e.g. the user's HF download)
    make_hf("BertModel").save_pretrained(hf_like)
    before = snapshot(hf_like)
    with pytest.raises(FileExistsError, match="not an engine conversion"):
        convert(roberta, hf_like, force=True, progress=False)
    assert snapshot(hf_like) == before


def test_new_folder_modes_and_symlinked_out(sources, tmp_path):
    bert, _ = sources
    out = tmp_path / "deep" / "er" / "out"  # missing parents are created
    convert(bert, out, progress=False)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask  # not the 0700 of a private temp folder
    os.chmod(out, 0o750)
    link = tmp_path / "link"
    link.symlink_to(out)
    convert(bert, link, force=True, progress=False)
    assert link.is_symlink() and stat.S_IMODE(out.stat().st_mode) == 0o750  # replaced where it points
    assert engine.from_pretrained(link).config.architecture == "BertForSequenceClassification"


def test_an_error_while_writing_leaves_out_untouched(sources, tmp_path, monkeypatch):
    bert, roberta = sources
    out = tmp_path / "out"
    convert(bert, out, progress=False)
    before = snapshot(out)

    def fail(name):
        if name == "file:config.json":
            raise KeyboardInterrupt  # Ctrl-C half-way
    monkeypatch.setattr(atomic, "STEP_HOOK", fail)
    with pytest.raises(KeyboardInterrupt):
        convert(roberta, out, force=True, progress=False)
    assert snapshot(out) == before and siblings(out) == []


# ---- killed at every point of the write (SIGKILL: no cleanup code runs) ------------------------------------
CHILD = """
import os, shutil, signal, sys, importlib.util
spec = importlib.util.spec_from_file_location("atomic_under_test", sys.argv[1])
atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)   # stdlib only: starts fast
out, new, kill_at, mode = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
if mode == "two-renames":
    atomic._exchange = lambda a, b: False
steps = []
def hook(name):
    steps.append(name)
    if len(steps) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
atomic.STEP_HOOK = hook
def fill(tmp):
    for name in sorted(os.listdir(new)):
        shutil.copyfile(os.path.join(new, name), os.path.join(tmp, name))
        atomic.step("file:" + name)
atomic.replace_dir(out, fill)
print(" ".join(steps))
"""


@pytest.fixture(scope="module")
def conversions(sources, tmp_path_factory):
    """(old conversion, new conversion) made by convert: BERT with tokenizer files, then RoBERTa without."""
    root = tmp_path_factory.mktemp("conv")
    bert, roberta = sources
    return convert(bert, root / "old", progress=False), convert(roberta, root / "new", progress=False)


@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
def test_killed_at_every_step_out_is_old_or_new(conversions, tmp_path, mode):
    old_ref, new_ref = conversions
    old, new = snapshot(old_ref), snapshot(new_ref)
    done = subprocess.run([sys.executable, "-c", CHILD, ATOMIC_PY, tmp_path / "probe", new_ref, "0", mode],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = done.stdout.split()
    assert steps[-3:] == ["synced", "swapped", "cleaned"] and len(steps) == len(new) + 3  # no set-aside: new dir
    seen = set()
    for kill_at in range(1, len(steps) + 2):  # every step, and past the last one (never killed)
        out = tmp_path / f"out{kill_at}"
        out.mkdir()
        for name in old:
            (out / name).write_bytes((old_ref / name).read_bytes())
        run = subprocess.run([sys.executable, "-c", CHILD, ATOMIC_PY, out, new_ref, str(kill_at), mode],
                             capture_output=True, text=True, timeout=60)
        killed = run.returncode == -signal.SIGKILL
        assert killed or run.returncode == 0, run.stderr
        if out.exists():
            state = snapshot(out)
            assert state in (old, new), f"killed at step {kill_at}: a mixture {sorted(state)}"
            seen.add("old" if state == old else "new")
        else:  # two renames, killed between them: the old conversion is complete beside OUT
            assert mode == "two-renames" and killed
            aside = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.engine-old-")]
            assert len(aside) == 1 and snapshot(aside[0]) == old
            seen.add("absent")
        atomic.replace_dir(out, lambda tmp: (tmp / "x").write_text("next write"))  # cleans the dead one's folders
        assert snapshot(out) == {"x": hashlib.sha256(b"next write").hexdigest()} and siblings(out) == []
    assert seen == ({"old", "new", "absent"} if mode == "two-renames" else {"old", "new"})


def test_convert_killed_between_weights_and_config(conversions, sources, tmp_path):
    """The issue's case, through the real convert: killed after the new weights are written, before the config."""
    old_ref, _ = conversions
    _, roberta = sources
    out = tmp_path / "out"
    out.mkdir()
    for name in snapshot(old_ref):
        (out / name).write_bytes((old_ref / name).read_bytes())
    code = ("import os, signal, sys\nfrom engine import atomic\nfrom engine.convert import convert\n"
            "atomic.STEP_HOOK = lambda s: s == 'file:model.safetensors' and os.kill(os.getpid(), signal.SIGKILL)\n"
            "convert(sys.argv[1], sys.argv[2], force=True, progress=False)\n")
    run = subprocess.run([sys.executable, "-c", code, roberta, out], capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert snapshot(out) == snapshot(old_ref)
    assert engine.from_pretrained(out).config.family == "bert"


def test_engine_files_are_what_convert_writes(conversions):
    old_ref, new_ref = conversions
    assert set(snapshot(old_ref)) | set(snapshot(new_ref)) <= set(ENGINE_FILES)
    assert json.loads((old_ref / "config.json").read_text())["engine_format"] == 1


def test_t5_conversions_are_atomic_too(sources, tmp_path):
    """A T5 folder (SentencePiece and tokenizer.json files, a generation_config.json) over a BERT conversion and
    back: --force leaves no file of the other family; generation_config's ids are carried in engine's config; a T5
    convert killed after its weights leaves the earlier conversion as it was."""
    bert, _ = sources
    t5 = tmp_path / "t5"
    hf = make_hf("T5ForConditionalGeneration")
    hf.config.decoder_start_token_id = 0
    hf.save_pretrained(t5)
    (t5 / "generation_config.json").write_text(json.dumps({"decoder_start_token_id": 0, "eos_token_id": [1, 5],
                                                           "pad_token_id": 0}))
    (t5 / "spiece.model").write_bytes(b"sentencepiece bytes")
    (t5 / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    convert(bert, out, progress=False)
    convert(t5, out, force=True, progress=False)
    assert set(snapshot(out)) == {"config.json", "model.safetensors", "spiece.model", "tokenizer.json"}
    model = engine.from_pretrained(out)
    assert (model.config.eos_token_id, model.config.decoder_start_token_id) == ([1, 5], 0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 61, (2, 7), generator=g)
    dec = torch.randint(2, 61, (2, 4), generator=g)
    with torch.no_grad():
        ref = hf(input_ids=ids, decoder_input_ids=dec).logits
    assert ((model(ids, decoder_input_ids=dec) - ref).abs().max() / ref.abs().max()) < 1e-4
    t5_state = snapshot(out)
    code = ("import os, signal, sys\nfrom engine import atomic\nfrom engine.convert import convert\n"
            "atomic.STEP_HOOK = lambda s: s == 'file:model.safetensors' and os.kill(os.getpid(), signal.SIGKILL)\n"
            "convert(sys.argv[1], sys.argv[2], force=True, progress=False)\n")
    run = subprocess.run([sys.executable, "-c", code, bert, out], capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert snapshot(out) == t5_state and siblings(out) != []  # the dead writer's temp folder, cleaned next time
    convert(bert, out, force=True, progress=False)
    assert "spiece.model" not in snapshot(out) and siblings(out) == []
    assert engine.from_pretrained(out).config.family == "bert"
