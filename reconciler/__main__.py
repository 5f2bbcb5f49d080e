"""``python -m reconciler``: the same as the ``cvmkeys`` console script."""

from reconciler.cli import main

if __name__ == "__main__":
    main()
