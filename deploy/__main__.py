"""``python -m effdeploy`` == the ``effdeploy`` console script."""

from .cli import main

main()
