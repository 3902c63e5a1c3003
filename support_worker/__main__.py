"""`python -m support_worker`: the same as `support-worker`."""

from support_worker.cli.main import main

main()
