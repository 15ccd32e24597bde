"""Allow `python -m autounet ...` (needed by torchrun)."""

from autounet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
