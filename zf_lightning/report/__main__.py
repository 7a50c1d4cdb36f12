import sys

from zf_lightning.sweeps.report import main

sys.exit(main())
