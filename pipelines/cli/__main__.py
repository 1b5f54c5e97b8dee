"""`python -m hyvid.pipelines.cli`: the same as the `hyvid` command."""
import sys

from hyvid.pipelines.cli import main

sys.exit(main())
