"""Package data of the web UI: Jinja2 templates and the bundled CSS/JavaScript.

Rendered by :mod:`qasino.frontends.web`; nothing here is loaded from another host.
"""
