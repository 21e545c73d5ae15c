"""`python -m inferline` runs the command-line interface."""

from inferline.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
