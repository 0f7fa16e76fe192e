import sys

from t2tedge.cli import main

sys.exit(main())
