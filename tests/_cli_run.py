"""Run the CLI in-process for tests: ``run_cli(argv, capsys) -> (exit code, stdout, stderr)``."""

from sdesolve_gen import cli


def run_cli(argv, capsys):
    """``cli.main(argv)``'s exit code (argparse's ``SystemExit`` code for --help and parse errors)
    and the captured output."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
