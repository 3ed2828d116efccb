"""The CLI behaves like the tools people know: --version, -q/-v, defaults and an example in
every --help, only opencir's own log lines, one-line errors for a missing extra, offline
backbone weights and a CUDA device on a machine without one."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opencir
from opencir.cli import HelpFormatter, build_parser, configure_logging, main
from opencir.commands import COMMANDS, _import_all  # noqa: F401  (registers every command)

SRC = Path(opencir.__file__).resolve().parents[1]


def _opencir(*argv: str, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh interpreter (``code`` runs first, e.g. to hide a package)."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    program = f"{code or ''}\nimport sys\nfrom opencir.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, env=full_env,
                          timeout=300)


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
    yield path, parser


def _commands():
    return [(path, parser) for path, parser in _walk(build_parser()) if " ".join(path) in COMMANDS]


def test_version_flag_prints_the_package_version():
    result = subprocess.run([sys.executable, "-m", "opencir", "--version"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
    assert result.stdout.strip() == f"opencir {opencir.__version__}"


def test_every_command_is_in_the_parser_and_every_option_has_help():
    commands = _commands()
    assert {" ".join(path) for path, _ in commands} == set(COMMANDS.names())
    missing = [f"{' '.join(path)} {action.option_strings or action.dest}"
               for path, parser in commands for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"options without help text: {missing}"
    plain = [" ".join(path) for path, parser in commands if parser.formatter_class is not HelpFormatter]
    assert not plain, f"these commands replace the CLI's help formatter (defaults would not show): {plain}"
    doubled = [f"{' '.join(path)} {action.option_strings}" for path, parser in commands for action in parser._actions
               if action.default not in (None, [], False) and "(default:" in (action.help or "")]
    assert not doubled, f"the formatter adds the default; these also write it in their help: {doubled}"


@pytest.mark.parametrize("name", COMMANDS.names())
def test_every_command_help_ends_with_an_example_that_parses(name, capsys):
    command = COMMANDS.get(name)
    assert command.example.strip(), f"command {name!r} declares no example"
    for line in command.example.strip().splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "opencir" and argv[1:1 + len(name.split())] == name.split(), line
        build_parser().parse_args(argv[1:])  # a wrong option would exit 2 here
    with pytest.raises(SystemExit) as exit_info:
        main([*name.split(), "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.rstrip().endswith(command.example.strip().splitlines()[-1].strip())
    assert "example:" in help_text or "examples:" in help_text


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 128)" in text and "(default: test)" in text and "(default: auto)" in text


def test_quiet_and_verbose_are_accepted_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-q", "demo"]).quiet and parser.parse_args(["demo", "-q"]).quiet
    assert parser.parse_args(["demo", "--verbose"]).verbose and not parser.parse_args(["demo"]).verbose


def test_only_the_opencir_logger_is_configured():
    program = ("import logging\nfrom opencir.cli import configure_logging\nrestore = configure_logging()\n"
               "import faiss\nlogging.getLogger('opencir.demo').info('own info line')\n"
               "logging.getLogger('somelib').info('third-party info')\n"
               "logging.getLogger('somelib').warning('third-party warning')\n"
               "restore()\nlogging.getLogger('opencir.demo').info('after restore')\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
    assert result.stderr.splitlines() == ["own info line", "warning: somelib: third-party warning"]


def test_quiet_hides_info_lines_but_not_results(shapes_root, tmp_path, capsys):
    argv = ["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "", "--dataset", "cir-shapes",
            "--root", str(shapes_root), "--split", "val", "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert main(["-q", *argv, "--out", str(tmp_path / "quiet")]) == 0
    quiet = capsys.readouterr()
    assert "wrote" in loud.err and "wrote" not in quiet.err
    assert json.loads(quiet.out).keys() == json.loads(loud.out).keys() == {"R@1", "R@5", "R@10", "R@50"}


def test_missing_extra_names_the_pip_command(tmp_path):
    hide = "import sys\nsys.modules['uvicorn'] = None\nsys.modules['fastapi'] = None"
    result = _opencir("serve", "--index", str(tmp_path / "idx"), code=hide)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "opencir: error: this needs the optional package 'uvicorn': pip install 'opencir[serve]'"]


def test_default_backbone_offline_is_one_line_with_the_fix(shapes_root, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    result = _opencir("eval", "--method", "sum", "--dataset", "cir-shapes", "--root", str(shapes_root),
                      "--device", "cpu", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "ViT-B-16/openai" in lines[0] and "cannot be downloaded" in lines[0] and "tiny-vit" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_cuda_is_one_line(shapes_root, capsys):
    assert main(["eval", "--method", "sum", "--arch", "tiny-vit", "--pretrained", "", "--dataset", "cir-shapes",
                 "--root", str(shapes_root), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no CUDA device" in err and "cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_python_evaluate_on_cuda_without_cuda_says_so(shapes_root):
    from opencir.backbones import BackboneSpec
    from opencir.data import load_dataset
    from opencir.evaluation.evaluator import evaluate
    from opencir.methods.io import build_method

    model = build_method("sum", BackboneSpec("tiny-vit"))
    with pytest.raises(ValueError, match="has no CUDA device.*device='cpu'"):
        evaluate(model, load_dataset("cir-shapes", shapes_root, "val"), batch_size=8, device="cuda")


def test_logging_is_restored_after_main(shapes_root, tmp_path):
    import logging

    before = (list(logging.getLogger().handlers), list(logging.getLogger("opencir").handlers),
              logging.getLogger("opencir").level)
    main(["eval-rankings", "cirr", "--root", str(tmp_path), "--split", "val", "--rankings", str(tmp_path / "r.json")])
    after = (list(logging.getLogger().handlers), list(logging.getLogger("opencir").handlers),
             logging.getLogger("opencir").level)
    assert before == after
    restore = configure_logging(verbose=True)
    assert logging.getLogger("opencir").level == logging.DEBUG
    restore()
    assert logging.getLogger("opencir").level == before[2]
