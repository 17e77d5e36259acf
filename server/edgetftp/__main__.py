import sys

from edgetftp.cli import main

sys.exit(main())
