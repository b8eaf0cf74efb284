"""`python -m fastai_attncrop COMMAND ...`: the console script `attncrop` (`fastai_attncrop.cli.main`) without installing it.

Not generated: this file is written by hand (nbdev exports `fastai_attncrop.cli`, which it runs)."""
import sys
from fastai_attncrop.cli import main

if __name__ == '__main__': sys.exit(main())
