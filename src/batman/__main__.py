import sys

from batman.cli import main

sys.exit(main())
