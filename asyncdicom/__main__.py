import sys

from asyncdicom.cli.main import main

sys.exit(main())
