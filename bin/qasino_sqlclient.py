#!/usr/bin/env python3
import os, sys; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qasino.cli import sqlclient_main; sys.exit(sqlclient_main())
