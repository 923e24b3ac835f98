"""catalyzer from a .tac file, for `twistd -y` deployments:

    twistd -ny examples/catalyzer.tac

The settings are the same as on the command line (or use "--config", "catalyzer.toml").
CATALYZER_LISTEN overrides the endpoint (the tests use it to pick a free port).
"""

import os

from twisted.application.service import Application

from catalyzer.tap import Options, makeService

options = Options()
options.parseOptions(
    [
        "--app",
        "examples.hello:app",
        "--listen",
        os.environ.get("CATALYZER_LISTEN", "tcp:8080:interface=127.0.0.1"),
        "--procs",
        os.environ.get("CATALYZER_PROCS", "1"),
    ]
)
application = Application("catalyzer")
makeService(options).setServiceParent(application)
