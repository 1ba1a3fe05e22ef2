"""The web console at ``/ui/``: server-rendered pages over the same ``/v0`` API the CLI uses.

``pages`` holds the routes, ``client`` the in-process way to the API (the console has no
authority of its own), ``charts`` the geometry of the Usage page's SVG charts. Templates and
the console's only script and style sheet sit beside them and ship in the wheel.
"""
