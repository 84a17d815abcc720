"""``python -m legr`` (what ``torchrun -m legr finetune CONFIG`` runs in every process): the `legr` command."""

from legr.cli import main

main()
