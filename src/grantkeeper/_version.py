"""This release's version, in one place: the public ``grantkeeper.__version__`` and what
grantkeeper names itself on the wire (the discovery probe's ``clientInfo``)."""

__version__ = "0.1.0"
