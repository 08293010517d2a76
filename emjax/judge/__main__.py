"""`python -m emjax.judge {judge,report} ...` (see emjax.judge.cli)."""

from emjax.judge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
