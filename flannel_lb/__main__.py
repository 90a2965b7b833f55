import sys

from flannel_lb.cli import main

sys.exit(main())
