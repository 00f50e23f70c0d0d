import sys

from deepseek_ext.demo.cli import main

sys.exit(main())
