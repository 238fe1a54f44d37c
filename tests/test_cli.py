"""The `fastssl` command: `info` names every backend of every op and why it cannot run; `bench` runs."""

import io
import json
import subprocess
import sys

import pytest

from fastssl import cli


def test_info_lists_every_op_and_backend_with_reasons():
    out = io.StringIO()
    assert cli.info(out) == 0
    text = out.getvalue()
    assert "torch" in text and "triton" in text
    for op in ("nt_xent", "info_nce", "clip_loss"):
        assert f"  {op}  (auto -> " in text
    for backend in ("reference", "cpp", "triton", "cuda"):
        assert f"    {backend:<10} " in text
    assert "no: " in text  # at least the cuda backend says why not, on a machine without a GPU build


def test_bench_contrastive_runs_a_small_cpu_case(tmp_path, capsys):
    rows = tmp_path / "rows.json"
    assert cli.main(["bench", "contrastive", "--device", "cpu", "--sizes", "256", "--reps", "1",
                     "--impls", "eager", "cpp", "--json", str(rows)]) == 0
    results = json.loads(rows.read_text())
    assert {r["impl"] for r in results} == {"eager", "cpp"}
    for r in results:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["peak_extra_mib"] >= 0
    assert "nt_xent 2N=   256" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["pretrain-everything"])


def test_info_into_a_closed_pipe_exits_without_a_traceback():
    # `fastssl info | head -1`: the reader closes the pipe after one line.
    proc = subprocess.Popen([sys.executable, "-m", "fastssl", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"fastssl")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()


@pytest.mark.parametrize("command", [[], ["pretrain"], ["eval"], ["finetune"], ["sample"]])
def test_help_keeps_its_example_lines_and_wraps_the_prose(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    examples = [line for line in text.splitlines() if line.startswith("    fastssl ")]
    assert examples, text
    # each example stands on its own line, whole: one command, no wrapped fragment of the next
    assert all(line.count("fastssl ") == 1 or "&&" in line for line in examples), examples
    prose = text.split("examples:" if "examples:" in text else "example:")[0]
    assert max(len(line) for line in prose.splitlines()) <= 100
