"""Hostile and mistaken specs and inputs: each is refused before any work, in one bounded line naming the
field or file, nothing outside the input is read, and nothing hangs.

The cases: unknown fields, wrong types (a yes/no for a number, a string for a mapping, inf and nan), a
10 MB string, control characters, ``..`` in a URL, YAML aliases nested into a 'billion laughs', a job
file that is not one, keys in a manifest that climb out of the input, an output that is the input or
holds it, and symbolic links in the input folder that lead outside it, to nothing or round in a loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluster import storage
from jobs import inputs
from jobs.cli import main
from jobs.errors import JobError, shorten
from jobs.spec import JobSpec, SpecError

BASE = {"input": "data/in", "output": "data/out", "task": "sr_avgpool", "model": "tiny",
        "checkpoint": "random"}
BIG = "x" * 10_000_000


def build(**kw):
    return JobSpec.build(**{**BASE, **kw})


@pytest.mark.parametrize("field", ["task", "model", "solver", "mode", "output", "input", "dtype"])
def test_a_10mb_string_is_refused_in_a_short_line(field):
    with pytest.raises(SpecError) as info:
        build(**{field: BIG})
    message = str(info.value)
    assert len(message) < 2_000, len(message)
    assert message.startswith(f"{field}=") or field == "solver", message
    assert "more characters" in message


def test_a_10mb_setting_value_and_key_are_cut_too():
    for sets in (["scale=" + BIG], [BIG[:100_000] + "=2"]):
        with pytest.raises(SpecError, match=r"more characters") as info:
            build(set=sets)
        assert len(str(info.value)) < 2_000


def test_shorten_keeps_normal_messages_and_bounds_any_message():
    line = "output s3://bucket/a/b: storage not reachable (ConnectTimeoutError: ...)"
    assert shorten(line) == line
    assert len(shorten("word " * 3_000_000)) < 5_000
    assert len(str(JobError("k=" + BIG))) < 200


@pytest.mark.parametrize("field,value,match", [
    ("steps", True, r"steps=True: True is a yes/no value, not a number"),
    ("seed", False, r"seed=False: .*yes/no"),
    ("eta", True, r"eta=True"),
    ("sigma_y", float("inf"), r"sigma_y=inf: .*finite"),
    ("eta", float("nan"), r"eta=nan: .*finite"),
    ("lease_ttl", float("inf"), r"lease_ttl=inf"),
    ("seed", 2**80, r"seed=1208925819614629174706176: .*less than or equal to 9223372036854775807"),
    ("settings", "scale=4", r"settings='scale=4': .*dictionary"),
    ("storage_options", [1, 2], r"storage_options=\[1, 2\]: .*dictionary"),
    ("steps", [1], r"steps=\[1\]"),
    ("stepz", 5, r"stepz: unknown field"),
])
def test_wrong_types_and_unknown_fields_named(field, value, match):
    with pytest.raises(SpecError, match=match):
        build(**{field: value})


@pytest.mark.parametrize("field", ["output", "input", "mask_url", "checkpoint"])
def test_urls_no_storage_takes_are_refused(field):
    with pytest.raises(SpecError, match=rf"{field}='s3://b/x/\.\./y': a '\.\.' segment in a URL"):
        build(**{field: "s3://b/x/../y"})
    with pytest.raises(SpecError, match=rf"{field}=.*control character '\\x00'"):
        build(**{field: "/data/a\x00b"})
    with pytest.raises(SpecError, match=rf"{field}=.*5000 characters, longer than any storage path"):
        build(**{field: "/" + "d" * 4999})


def test_local_dotdot_is_resolved_not_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = build(output="../results/./run1")
    assert spec.output == str(tmp_path.parent / "results" / "run1")


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    job = tmp_path / "laughs.yaml"
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):  # 9**9 = 387 million strings if expanded
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    job.write_text("input: in\noutput: out\ntask: denoise\nmodel: tiny\nsettings:\n"
                   + "".join(f"  {line}\n" for line in levels))
    with pytest.raises(SpecError, match=r"laughs\.yaml.*aliases \(\*name\) are not allowed"):
        JobSpec.build(job)


def test_a_job_file_that_is_not_one(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("input: in\noutput: out\ntask: denoise\nnote: '" + "y" * (2 << 20) + "'\n")
    with pytest.raises(SpecError, match=r"huge\.yaml.*bytes, more than a job file holds"):
        JobSpec.build(huge)
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00" * 10)
    with pytest.raises(SpecError, match=r"photo\.yaml.*not text"):
        JobSpec.build(binary)


@pytest.mark.parametrize("key,why", [
    ("../outside.png", r"'\.\.'"),
    ("a/../../b.png", r"'\.\.'"),
    ("a//b.png", r"empty path segment"),
    ("a\x07b.png", r"control character"),
    ("k" * 1100 + ".png", r"longer than any storage key"),
])
def test_manifest_keys_that_climb_out_are_refused(tmp_path, key, why):
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"good.png\n{key}\n")
    with pytest.raises(JobError, match=rf"list\.txt: the key .* {why}"):
        inputs.list_inputs(str(manifest), {})


def test_absolute_manifest_entries_with_dotdot_climb_out_too(tmp_path):
    manifest = tmp_path / "abs.txt"
    manifest.write_text(f"{tmp_path}/in/a.png\n{tmp_path}/in/x/../../../etc/passwd.png\n")
    with pytest.raises(JobError, match=r"'\.\.'"):
        inputs.list_inputs(str(manifest), {})


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def _input_with(tmp_path: Path) -> tuple[Path, Path]:
    inp, outside = tmp_path / "in", tmp_path / "outside"
    _image(inp / "a.png")
    _image(inp / "sub" / "b.png")
    _image(outside / "secret.png")
    return inp, outside


def test_links_inside_the_folder_are_followed_or_skipped_and_loops_do_not_hang(tmp_path):
    inp, _ = _input_with(tmp_path)
    os.symlink("../a.png", inp / "sub" / "alias.png")       # a file inside: a key of its own
    os.symlink(str(inp), inp / "sub" / "loop")               # a folder link to an ancestor: not followed
    os.symlink("sub", inp / "again")                          # a folder inside: its files are listed once
    root, keys = inputs.list_inputs(str(inp), {})
    assert root == str(inp)
    assert keys == ["a.png", "sub/alias.png", "sub/b.png"]


@pytest.mark.parametrize("make,match", [
    (lambda inp, out: os.symlink(out / "secret.png", inp / "leak.png"), r"leak\.png is a symbolic link to "
     r".*outside[/\\]secret\.png, outside the folder"),
    (lambda inp, out: os.symlink(out, inp / "more"), r"more is a symbolic link to .*outside, outside the "
     r"folder"),
    (lambda inp, out: os.symlink("self.png", inp / "self.png"), r"self\.png is a symbolic link to "
     r"'self\.png' that loops"),
    (lambda inp, out: os.symlink("gone.png", inp / "dangling.png"), r"dangling\.png .* points to nothing"),
])
def test_links_leading_out_dangling_or_looping_are_refused(tmp_path, make, match):
    inp, outside = _input_with(tmp_path)
    make(inp, outside)
    with pytest.raises(JobError, match=rf"^input {inp}: .*{match}"):
        inputs.list_inputs(str(inp), {})


def test_a_link_that_is_not_an_image_is_not_read_so_not_refused(tmp_path):
    inp, outside = _input_with(tmp_path)
    os.symlink(tmp_path / "nowhere", inp / "README")
    assert inputs.list_inputs(str(inp), {})[1] == ["a.png", "sub/b.png"]


def test_an_unreadable_subfolder_is_an_error_not_a_shorter_listing(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any folder: chmod cannot make one unreadable")
    inp, _ = _input_with(tmp_path)
    (inp / "sub").chmod(0)
    try:
        with pytest.raises(storage.StorageError, match=r"PermissionError"):
            storage.find(str(inp))
    finally:
        (inp / "sub").chmod(0o755)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["run", "--task", "denoise", "--model", "tiny", "--checkpoint", "random", "--steps", "2",
                 *argv])
    return code, capsys.readouterr().err


def test_cli_refuses_an_output_that_is_the_input_or_holds_it(tmp_path, capsys):
    inp, _ = _input_with(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output, match in [(f"{inp}/sub/..", r"is the input folder"), (str(tmp_path), r"holds the input")]:
        code, err = _cli(capsys, "--input", str(inp), "--output", output)
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ddnm-batch: error: output "), err
        assert match.replace("\\", "") in lines[0] and "--output" in lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_cli_refuses_a_link_out_of_the_input_before_any_work(tmp_path, capsys):
    inp, outside = _input_with(tmp_path)
    os.symlink(outside, inp / "more")
    out = tmp_path / "out"
    code, err = _cli(capsys, "--input", str(inp), "--output", str(out))
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and "more is a symbolic link" in err, err
    assert not out.exists() or not any(p.name.startswith(("_plan", "_spec")) for p in out.iterdir())
