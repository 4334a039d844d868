"""`python -m hpc` is the `hpc` command; mpirun starts ranks this way."""

import sys

from hpc.cli.main import main

sys.exit(main())
