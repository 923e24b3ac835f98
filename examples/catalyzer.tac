"""catalyzer from a .tac file, for `twistd -y` deployments:

    twistd -ny examples/catalyzer.tac

The settings are the same as on the command line (or use "--config", "catalyzer.toml"), and
CATALYZER_NAME environment variables apply here too: CATALYZER_LISTEN=unix:/run/app.sock,
CATALYZER_PROCS=4 (the tests use them to pick a free socket and the mode).
"""

from twisted.application.service import Application

from catalyzer.tap import Options, makeService

options = Options()
options.parseOptions(["--app", "examples.hello:app"])
application = Application("catalyzer")
makeService(options).setServiceParent(application)
