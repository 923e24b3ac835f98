"""Split mode: an HTTP front and WSGI handlers on any host, over ZeroMQ.

``frames`` (the wire codec) and ``router`` (every routing and failure decision) are pure: no
Twisted, no ZeroMQ. ``zmqio`` is the one module that imports ``zmq``: a ZeroMQ socket as a Twisted
reader. ``front`` (the HTTP engine's responder that hands requests to the router) and ``handler``
(the WSGI host on the other side) are the Twisted shells; ``tap`` holds both ``twistd`` entry
points. A product beside ``prefork`` and ``dispatch``: may import server, wsgi, process, ops, http.
See docs/split.md.
"""
