import sys

from trt_mpq.cli.main import main

sys.exit(main())
