"""wan.validation through the CLI: every hostile input is exit 2, one line naming flag and value, no file left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generate
from wan import engine
from wan.batch.jobs import plan_jobs
from wan.batch.prompt_file import parse_item
from wan.errors import ConfigError
from wan.settings import GenerationSettings
from wan.validation import RULES, SEED_MAX, check_flags, max_frame_num

REPO = Path(__file__).resolve().parent.parent

# (flags added to a valid single-video command line, a fragment of the one-line error); the checks
# run before the model loads, so each case takes milliseconds.
HOSTILE: list[tuple[list[str], str]] = [
    (["--frame_num", "100001"], "--frame_num 100001: at most 4093: the model's positional table"),
    (["--frame_num", "0"], "--frame_num 0: must be 4n+1"),
    (["--frame_num", "-3"], "--frame_num -3: must be 4n+1"),
    (["--frame_num", "16"], "--frame_num 16: must be 4n+1 (e.g. 13 or 17)"),
    (["--frame_num", "1e3"], "argument --frame_num: invalid int value: '1e3'"),
    (["--base_seed", str(2**70)], f"--base_seed {2**70}: must be -1 (random) or 0 to {SEED_MAX}"),
    (["--base_seed", str(2**32)], "must be -1 (random) or 0 to"),
    (["--base_seed", "-2"], "--base_seed -2: must be -1 (random)"),
    (["--sample_guide_scale", "nan"], "--sample_guide_scale nan: must be a finite number >= 0 and <= 100"),
    (["--sample_guide_scale", "inf"], "--sample_guide_scale inf: must be a finite number"),
    (["--sample_guide_scale", "-1"], "--sample_guide_scale -1.0: must be a finite number >= 0"),
    (["--sample_shift", "0"], "--sample_shift 0.0: must be a finite number > 0 and <= 1000"),
    (["--sample_shift=-inf"], "--sample_shift -inf: must be a finite number > 0"),
    (["--sample_shift", "1e400"], "--sample_shift inf: must be a finite number > 0"),
    (["--sample_steps", "0"], "--sample_steps 0: must be an integer >= 1 and <= 1000"),
    (["--sample_steps", str(10**30)], "--sample_steps 1000000000000000000000000000000: must be an integer"),
    (["--sample_solver", "ddim"], "argument --sample_solver: invalid choice: 'ddim'"),
    (["--cfg_truncate_steps", "-1"], "--cfg_truncate_steps -1: must be an integer >= 0"),
    (["--cfg_truncate_steps", "4"], "--cfg_truncate_steps 4 exceeds the 3 sampling steps"),
    (["--cfg_truncate_high_noise_steps", "-5"], "--cfg_truncate_high_noise_steps -5: must be an integer >= 0"),
    (["--cfg_truncate_high_noise_steps", "3"], "--cfg_truncate_high_noise_steps 3 exceeds the 2 high-noise steps"),
    (["--enable_half_frame_generation", "--sample_steps", "1"], "half-frame generation needs low-noise steps"),
    (["--ulysses_size", "0"], "--ulysses_size 0: must be an integer >= 1"),
    (["--size", "0*0"], "--size '0*0': task t2v-test takes W*H, one of: 32*32, 48*32"),
    (["--size=-16*16"], "--size '-16*16': task t2v-test takes W*H"),
    (["--size", "abc"], "--size 'abc': task t2v-test takes W*H"),
    (["--size", ""], "--size '': task t2v-test takes W*H"),
    (["--size", "33*32"], "--size '33*32': task t2v-test takes W*H"),
    (["--prompt", ""], "--prompt '': the prompt is empty after cleaning"),
    (["--prompt", " \t\n "], "the prompt is empty after cleaning"),
    (["--prompt", "&nbsp; &amp;nbsp;"], "the prompt is empty after cleaning"),
    (["--device", "bogus"], "--device 'bogus': not a device; use cpu, cuda or cuda:N"),
    (["--device", ""], "--device '': not a device"),
    (["--device", "cuda"], "--device 'cuda': CUDA is not available on this machine"),
    (["--device", "meta"], "--device 'meta': not supported; use cpu, cuda or cuda:N"),
    (["--ckpt_dir", "NOPE"], "--ckpt_dir 'NOPE': does not exist"),
    (["--ckpt_dir", "FILE"], "--ckpt_dir 'FILE': is not a folder"),
    (["--ckpt_dir", ""], "--ckpt_dir '': an empty path"),
    (["--save_file", "x.avi"], "--save_file 'x.avi': must end in .mp4 (video) or .png"),
    (["--save_file", ""], "--save_file '': must end in .mp4"),
    (["--save_file", "DIR.mp4"], "--save_file 'DIR.mp4': is a folder"),
    (["--save_file", "FILE/a.mp4"], "FILE is a file, not a folder"),
    (["--save_dir", "FILE"], "--save_dir 'FILE': is a file, not a folder"),
    (["--save_dir", ""], "--save_dir '': an empty path"),
    (["--attention_backend", " "], "--attention_backend ' ': must not be empty"),
    (["--offload_model", "maybe"], "argument --offload_model: expected true or false"),
]
BATCH: list[tuple[list[str], str]] = [
    (["--size", "33*32"], "--size '33*32': task t2v-test takes W*H"),
    (["--sample_guide_scale", "nan"], "--sample_guide_scale nan: must be a finite number"),
    (["--frame_num", "100001"], "--frame_num 100001: at most 4093"),
    (["--device", "bogus"], "--device 'bogus': not a device"),
    (["--prompt_file", ""], "--prompt_file '': an empty path"),
    (["--prompt_file", "DIR.mp4"], "--prompt_file 'DIR.mp4': is not a file"),
    (["--prompt_file", "NOPE.txt"], "--prompt_file 'NOPE.txt': does not exist"),
]


@pytest.fixture
def cli(task_file, ckpt, tmp_path, monkeypatch):
    """A valid command line in an empty folder (plus FILE and DIR.mp4 to misuse); the model must not load."""
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answers on a GPU machine
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("")
    (tmp_path / "DIR.mp4").mkdir()
    return ["--task", str(task_file), "--ckpt_dir", str(ckpt), "--device", "cpu", "--quiet", "--prompt", "a cat"]


def main(args: list[str]) -> int:
    """generate.main's exit code, argparse's errors (SystemExit) included."""
    try:
        return generate.main(args)
    except SystemExit as exc:
        return int(exc.code)


def assert_refused(args: list[str], fragment: str, folder: Path, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["DIR.mp4", "FILE"]  # no output, temporary or lock file
    assert not any((folder / "DIR.mp4").iterdir())


@pytest.mark.parametrize(("flags", "fragment"), HOSTILE, ids=[" ".join(f) for f, _ in HOSTILE])
def test_hostile_flag_is_exit_2_one_line_nothing_written(cli, tmp_path, capsys, flags, fragment):
    assert_refused([*cli, *flags], fragment, tmp_path, capsys)


@pytest.mark.parametrize(("flags", "fragment"), BATCH, ids=[" ".join(f) for f, _ in BATCH])
def test_hostile_flag_in_a_batch_is_one_line_before_any_item(cli, tmp_path, capsys, flags, fragment):
    """Checked once for the command line, not once per item; the batch folder is not even created."""
    prompts = tmp_path / "DIR.mp4" / "p.txt"
    prompts.write_text("a cat\n" * 50)
    args = [a for a in cli if a not in ("--prompt", "a cat")]
    assert main([*args, "--prompt_file", str(prompts), "--save_dir", "out", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR.mp4", "FILE"]
    assert [p.name for p in (tmp_path / "DIR.mp4").iterdir()] == ["p.txt"]


def test_missing_cuda_device_names_the_devices(cli, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert_refused(
        [*cli, "--device", "cuda:7"], "--device 'cuda:7': this machine has 2 CUDA device(s)", tmp_path, capsys
    )


def test_internal_error_is_one_line_with_the_trace_file(cli, tmp_path, capsys, monkeypatch):
    def broken(*args):
        raise TypeError("boom")

    monkeypatch.setattr(engine, "build_engine", broken)
    assert main([*cli, "--save_file", "a.mp4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error (TypeError: boom); full trace in ") and err.count("\n") == 1
    trace = Path(err.split("full trace in ")[1].split(" (--debug")[0])
    assert "Traceback" in trace.read_text() and 'raise TypeError("boom")' in trace.read_text()
    trace.unlink()
    with pytest.raises(TypeError, match="boom"):
        main([*cli, "--save_file", "a.mp4", "--debug"])


@pytest.mark.parametrize(
    "flags", [["--device", "bogus"], ["--base_seed", str(2**70)], ["--frame_num", "abc"]], ids=lambda f: " ".join(f)
)
def test_real_process_prints_one_line_and_no_traceback(flags, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "generate.py"), "--prompt", "a cat", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------- batch items
ITEMS: list[tuple[str, str]] = [
    ('{"prompt": "x", "sample_shift": NaN}', "--sample_shift nan: must be a finite number > 0"),
    ('{"prompt": "x", "sample_guide_scale": -Infinity}', "--sample_guide_scale -inf: must be a finite number"),
    (f'{{"prompt": "x", "seed": {2**70}}}', f"--base_seed {2**70}: must be -1 (random) or 0 to"),
    ('{"prompt": "x", "frame_num": 100000000000000000000000}', "--frame_num 100000000000000000000000: at most"),
    ('{"prompt": "x", "sample_steps": 0}', "--sample_steps 0: must be an integer >= 1"),
    ('{"prompt": "x", "size": ""}', "--size '': task t2v-tiny takes W*H"),
    ('{"prompt": "x", "sample_solver": "ddim"}', "--sample_solver 'ddim': choose one of: unipc, dpm++, euler"),
    ('{"prompt": "x", "frame_completion": "magic"}', "--frame_completion 'magic': choose one of"),
    ('{"prompt": "&amp;nbsp;  "}', "--prompt '&amp;nbsp;  ': the prompt is empty after cleaning"),
    ('{"prompt": "x", "save_file": "../x.mp4"}', "is outside --save_dir"),
    ('{"prompt": "x", "save_file": "/tmp/x.mp4"}', "is outside --save_dir"),
    ('{"prompt": "x", "save_file": "x.mp4.json"}', "must end in .mp4 (video) or .png"),
    ('{"prompt": "x", "save_file": ""}', "must end in .mp4 (video) or .png"),
]


@pytest.mark.parametrize(("line", "fragment"), ITEMS, ids=[line for line, _ in ITEMS])
def test_hostile_item_fails_alone_naming_the_flag(line, fragment, tmp_path):
    defaults = generate.generation_flags(vars(generate.build_parser().parse_args([])))
    items = [parse_item(0, 1, line), parse_item(1, 2, "a cat")]
    bad, good = plan_jobs(items, defaults, generate.load_task_config("t2v-tiny"), tmp_path)
    assert bad.error is not None and fragment in bad.error, bad.error
    assert good.error is None


def test_names_that_differ_only_in_case_are_one_output(tmp_path):
    defaults = generate.generation_flags(vars(generate.build_parser().parse_args([])))
    items = [
        parse_item(i, i + 1, json.dumps({"prompt": "x", "save_file": name}))
        for i, name in enumerate(["a.mp4", "A.MP4"])
    ]
    first, second = plan_jobs(items, defaults, generate.load_task_config("t2v-tiny"), tmp_path)
    assert first.error is None and "is already item 0's output" in second.error


# ----------------------------------------------------------------------------------- the table itself
def test_every_generation_setting_has_a_rule():
    """A new GenerationSettings field or item flag without a check fails here, not in a user's run."""
    from wan.batch.prompt_file import ITEM_FLAGS
    from wan.settings import SETTING_FLAGS

    unchecked = {"negative_prompt", "enable_half_frame_generation", "enable_improved_frame_completion"}
    assert set(ITEM_FLAGS) - {"save_file"} - unchecked <= set(RULES)
    fields = {SETTING_FLAGS.get(name, name) for name in GenerationSettings.__dataclass_fields__}
    assert fields - {"half_frame", "negative_prompt"} <= set(RULES)


def test_limits_are_inclusive(test_config):
    config = test_config
    ok = {
        "base_seed": SEED_MAX,
        "frame_num": max_frame_num(config),
        "sample_steps": config.num_train_timesteps,
        "sample_shift": 1000.0,
        "sample_guide_scale": 0.0,
    }
    check_flags(ok, config)
    for name, value in [("base_seed", SEED_MAX + 1), ("frame_num", max_frame_num(config) + 4)]:
        with pytest.raises(ConfigError, match=f"--{name} {value}:"):
            check_flags({name: value}, config)


def test_a_listed_size_the_patches_do_not_divide_is_refused(test_config):
    import dataclasses

    config = dataclasses.replace(test_config, sizes=("40*32",), default_size="40*32")
    with pytest.raises(ConfigError, match="sizes must be multiples of 16 wide and 16 high"):
        check_flags({"size": "40*32"}, config)
