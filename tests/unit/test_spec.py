"""JobSpec: YAML + flags, validation messages naming the field and value, the hash, the worker config."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from jobs.spec import JobSpec, SpecError, parse_assignments, parse_travel

BASE = {"input": "data/in", "output": "data/out", "task": "sr_avgpool", "model": "tiny",
        "checkpoint": "random"}


def build(**kw):
    return JobSpec.build(**{**BASE, **kw})


def test_defaults_and_worker_config_contract():
    spec = build(set=["scale=4"])
    cfg = spec.to_worker_config()
    assert {f.name for f in dataclasses.fields(cfg)} == {
        "input_url", "output_url", "storage_options", "mode", "task", "task_settings", "mask_url", "model",
        "checkpoint", "sampling", "batch_size", "panels", "threads", "lpips_weights", "lpips_net",
        "inception_weights", "max_pixels"}
    assert cfg.task_settings == {"scale": 4} and isinstance(cfg.task_settings["scale"], int)
    assert cfg.sampling.travel == (1, 1, 1) and cfg.mode == "restore"  # own photos are restored as they are
    assert cfg.sampling.name == "ddnm" and cfg.sampling == spec.sampling()
    assert spec.to_worker_config(input_url="s3://b/root").input_url == "s3://b/root"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling = None  # frozen: what the driver sent is what every worker runs
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling.steps = 3


def test_yaml_file_and_flags_override(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("input: s3://bkt/in\noutput: s3://bkt/out\ntask: sr_avgpool\nset:\n  scale: 2\n"
                   "steps: 50\nshard-size: 8\nmodel: tiny\ncheckpoint: random\n"
                   "storage_options:\n  anon: false\n")
    spec = JobSpec.build(job, steps=10, set=["scale=4"], storage_option=["client_kwargs.region_name=eu"])
    assert spec.steps == 10 and spec.shard_size == 8 and spec.settings == {"scale": 4}
    assert spec.input == "s3://bkt/in"
    assert spec.storage_options["anon"] is False
    assert spec.storage_options["client_kwargs"] == {"region_name": "eu"}
    assert JobSpec.build(job).steps == 50


def test_frozen():
    spec = build()
    with pytest.raises(ValidationError, match="frozen"):
        spec.steps = 3  # type: ignore[misc]


def test_unknown_task_lists_known():
    with pytest.raises(SpecError, match=r"task='sr_magic'.*known tasks:.*sr_avgpool"):
        build(task="sr_magic")


def test_unknown_set_key_named():
    with pytest.raises(SpecError, match=r"--set zoom='4'.*no setting 'zoom'.*scale"):
        build(set=["zoom=4"])


def test_set_value_typed_and_bad_type_named():
    settings = build(task="inpaint", set=["keep=0.25", "box=1,2,3,4"]).settings
    assert settings == {"keep": 0.25, "box": (1, 2, 3, 4)}
    with pytest.raises(SpecError, match=r"--set scale='four'.*int"):
        build(set=["scale=four"])
    with pytest.raises(SpecError, match=r"--set scale='2.5'"):
        build(set=["scale=2.5"])


@pytest.mark.parametrize("field,value,match", [
    ("steps", -3, r"steps=-3"),
    ("eta", 2.0, r"eta=2\.0"),
    ("mode", "restorate", r"mode='restorate'"),
    ("samples", 0, r"samples=0"),
    ("shard_size", 0, r"shard_size=0"),
    ("model", "gpt-9", r"model='gpt-9'.*known models"),
])
def test_bad_fields_named(field, value, match):
    with pytest.raises(SpecError, match=match):
        build(**{field: value})


def test_missing_required_and_unknown_field(tmp_path):
    with pytest.raises(SpecError, match=r"output: required"):
        JobSpec.build(input="a", task="denoise", model="tiny")
    job = tmp_path / "j.yaml"
    job.write_text("input: a\noutput: b\ntask: denoise\nstepz: 5\n")
    with pytest.raises(SpecError, match=r"stepz: unknown field"):
        JobSpec.build(job)


def test_bad_yaml_file_named(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml"):
        JobSpec.build(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match=r"expected a mapping"):
        JobSpec.build(bad)


def test_travel():
    assert parse_travel("5,5,2") == (5, 5, 2)
    assert build(travel="3, 3, 2").travel == (3, 3, 2)
    assert build(travel=[2, 2, 2]).travel == (2, 2, 2)
    with pytest.raises(SpecError, match=r"travel='5,5'"):
        build(travel="5,5")
    with pytest.raises(SpecError, match=r"travel='a,b,c'"):
        build(travel="a,b,c")
    with pytest.raises(SpecError, match=r"travel=5,5,2 with steps=4: .*L=5"):
        build(travel="5,5,2", steps=4)


def test_assignments():
    assert parse_assignments(["a=1", "b.c=x=y"], field="--set") == {"a": "1", "b": {"c": "x=y"}}
    with pytest.raises(SpecError, match=r"--set='oops'"):
        parse_assignments(["oops"], field="--set")


def test_hash_covers_result_fields_only():
    a = build(set=["scale=4"])
    assert a.spec_hash() == build(set=["scale=4"], workers=8, address="ray://x:1", overwrite=True,
                                  incremental=True, shard_size=3, batch_size=2).spec_hash()
    for change in ({"steps": 7}, {"set": ["scale=2"]}, {"seed": 1}, {"eta": 0.5}, {"mode": "evaluate"},
                   {"travel": "2,2,2"}, {"input": "other"}, {"checkpoint": None, "model": "small-prior"}):
        assert build(**{"set": ["scale=4"], **change}).spec_hash() != a.spec_hash(), change


def test_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert build(input="s3://bkt/in").storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
    assert build().storage_options == {}  # local URLs get no endpoint
    given = build(input="s3://bkt/in", storage_option=["endpoint_url=http://minio:9000"])
    assert given.storage_options == {"endpoint_url": "http://minio:9000"}


def test_public_dict_redacts_secrets():
    spec = build(storage_option=["key=AKIA", "secret=shh", "endpoint_url=http://x"])
    public = spec.public_dict()["storage_options"]
    assert public == {"key": "***", "secret": "***", "endpoint_url": "http://x"}
    assert spec.storage_options["secret"] == "shh"


def test_custom_operator_dotted_path():
    with pytest.raises(SpecError, match=r"task='nosuchpkg\.mod:Op'.*cannot import"):
        build(task="nosuchpkg.mod:Op")


def test_example_job_files_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        spec = JobSpec.build(path)
        assert spec.to_worker_config().input_url == spec.input, path
    s3 = JobSpec.build(examples[[p.name for p in examples].index("s3-eval.yaml")])
    assert s3.task == "sr_bicubic" and s3.settings == {"scale": 4} and s3.input.startswith("s3://")


def test_local_paths_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = build(input="photos", output="out/", task="inpaint", set=["mask=masks/m.png"])
    assert spec.input == str(tmp_path / "photos") and spec.output == str(tmp_path / "out")
    assert spec.settings["mask"] == str(tmp_path / "masks" / "m.png") and spec.checkpoint == "random"
    assert build(task="inpaint", set=["mask=center"]).settings["mask"] == "center"
    assert build(input="s3://b/x").input == "s3://b/x"


def test_perceptual_weights_need_evaluate_mode_and_join_the_hash_only_when_given():
    plain = build(set=["scale=4"], mode="evaluate")
    assert "lpips_weights" not in plain.result_fields()  # old outputs keep their hash
    with_lpips = build(set=["scale=4"], mode="evaluate", lpips_weights="w/alex.pth", lpips_net="vgg")
    assert with_lpips.result_fields()["lpips_net"] == "vgg" and with_lpips.spec_hash() != plain.spec_hash()
    assert with_lpips.lpips_weights.endswith("/w/alex.pth")  # local paths absolute, as checkpoints
    cfg = with_lpips.to_worker_config()
    assert (cfg.lpips_weights, cfg.lpips_net, cfg.inception_weights) == (
        with_lpips.lpips_weights, "vgg", None)
    with pytest.raises(SpecError, match="inception_weights=s3://b/i.pth: needs mode evaluate"):
        build(set=["scale=4"], mode="restore", inception_weights="s3://b/i.pth")
    with pytest.raises(SpecError, match="lpips_net='squeeze'"):
        build(set=["scale=4"], lpips_net="squeeze")
