import sys

from cds_daemon.cli import main

sys.exit(main())
