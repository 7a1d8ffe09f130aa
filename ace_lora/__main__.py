import sys

from ace_lora.cli import main

sys.exit(main())
