import sys

from mailfleet_cli import main

sys.exit(main())
