"""Tests of the command line ``python -m search_spaces`` (called through ``main(argv)``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from search_spaces import get_space
from search_spaces.__main__ import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_json_is_the_native_string_and_seeded(capsys):
    code, out, _ = run(capsys, "sample", "--space", "darts", "-n", "3", "--format", "json", "--seed", "7")
    lines = out.splitlines()
    space = get_space("darts")
    assert code == 0 and lines == [space.format(g) for g in space.sample(3, seed=7)]
    assert all(space.format(space.parse(line)) == line for line in lines)
    assert run(capsys, "sample", "--space", "darts", "-n", "3", "--seed", "7")[1] == out  # json is the default


def test_sample_nni_is_json_of_to_nni(capsys):
    code, out, _ = run(capsys, "sample", "--space", "darts", "-n", "2", "--format", "nni", "--seed", "1")
    space = get_space("darts")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [space.to_nni(g) for g in space.sample(2, seed=1)]


def test_sample_text_is_the_canonical_text(capsys):
    code, out, _ = run(capsys, "sample", "--space", "nb201", "-n", "2", "--format", "text", "--seed", "0")
    space = get_space("nb201")
    assert code == 0 and out == "".join(space.to_text(g) + "\n" for g in space.sample(2, seed=0))
    assert out.count("main: 3x32x32\n") == 2


def test_text_of_an_arch_and_of_an_onnx_file(capsys, tmp_path):
    import onnx

    space = get_space("nb201")
    g = space.sample(1, seed=4)[0]
    code, out, _ = run(capsys, "text", "--space", "nb201", "--arch", space.format(g))
    assert code == 0 and out == space.to_text(g)
    path = tmp_path / "net.onnx"
    onnx.save(space.to_onnx(g), path)
    assert run(capsys, "text", "--onnx", str(path))[1] == out


def test_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--space", "no_such_space"])
    assert e.value.code == 2 and "invalid choice: 'no_such_space'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--space", "nb201", "--format", "nni"])
    assert "space 'nb201' has no NNI form" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["text", "--space", "darts"])
    assert "needs --space and --arch" in capsys.readouterr().err
    code, _, err = run(capsys, "text", "--space", "darts", "--arch", "not json")
    assert code == 1 and err.startswith("error: darts:")
    code, _, err = run(capsys, "text", "--onnx", str(tmp_path / "missing.onnx"))
    assert code == 1 and "cannot read ONNX file" in err


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "search_spaces", "sample", "--space", "nb201", "-n", "1", "--seed", "0"],
        capture_output=True, text=True, timeout=120,
    )
    space = get_space("nb201")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == space.format(space.sample(1, seed=0)[0]) + "\n"
