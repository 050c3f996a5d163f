import sys

from cds_daemon.cli.main import main

sys.exit(main())
