"""`tandem train|compare --mixture RUN`: the run's [data], [model] and run.backend are defaults."""

import json

from utils import a_backend, set_args, small_job

from tandem_adapters.cli import main


def _folder(root, domains, words):
    for name in domains:
        (root / name).mkdir(parents=True)
        text = "".join(f"{name} {words} {i % 7}\n" for i in range(300))
        (root / name / "a.txt").write_text(text)
    return root


def _optimize(tmp_path):
    data = _folder(tmp_path / "data", ("code", "news", "web"), "alpha beta")
    run = tmp_path / "opt"
    sets = [
        *small_job(),
        f"run.backend={a_backend()}",
        f'data.path="{data}"',
        "data.val_fraction=0.2",
        "model.d_model=16",
        f'run.run_dir="{run}"',
        "train.steps=20",
    ]
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    return run


def _cmp_args(run_dir, *extra):
    sets = ["train.steps=10", "train.log_every=5", f'run.run_dir="{run_dir}"', *extra]
    return [*set_args(*sets), "-q"]


def test_compare_reuses_the_runs_data_and_model(tmp_path, capsys):
    run = _optimize(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--mixture", str(run), *_cmp_args(out)]) == 0
    table = json.loads((out / "compare.json").read_text())
    assert table["domains"] == ["code", "news", "web"]
    config = (out / "learned" / "config.toml").read_text()
    assert "d_model = 16" in config and str(tmp_path / "data") in config


def test_set_overrides_the_runs_data(tmp_path, capsys):
    run = _optimize(tmp_path)
    other = _folder(tmp_path / "other", ("code", "news", "web"), "gamma delta")
    out = tmp_path / "train"
    args = _cmp_args(out, f'data.path="{other}"', "model.d_model=32")
    assert main(["train", "--mixture", str(run / "mixture.json"), *args]) == 0
    config = (out / "config.toml").read_text()
    assert str(other) in config and "d_model = 32" in config
    # another folder's domains: the mixture no longer fits, and the error says so
    bad = _folder(tmp_path / "bad", ("x", "y"), "w")
    assert (
        main(["compare", "--mixture", str(run), *_cmp_args(tmp_path / "c2", f'data.path="{bad}"')])
        == 2
    )
    assert "domains do not match" in capsys.readouterr().err


def test_a_validation_option_replaces_the_runs_other_one(tmp_path, capsys):
    run = _optimize(tmp_path)  # data.val_fraction=0.2
    target = tmp_path / "target.txt"
    target.write_text("".join(f"code alpha beta {i % 7}\n" for i in range(100)))
    out = tmp_path / "train"
    args = _cmp_args(out, f'data.target_path="{target}"')
    assert main(["train", "--mixture", str(run), *args]) == 0  # not "exclusive" options
    config = (out / "config.toml").read_text()
    assert str(target) in config and "val_fraction = 0.2" not in config
