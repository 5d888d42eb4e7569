"""`python -m homegrown` — the same CLI, for launchers that take a module (`torchrun -m homegrown ...`)."""

from homegrown.cli import main

main()
