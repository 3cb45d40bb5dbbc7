import sys

from components.trainjob.render import main

sys.exit(main())
