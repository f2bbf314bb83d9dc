"""DIMSE services on top of :class:`asyncdicom.association.Association`.

Each module holds the SCU side (functions the association's methods call) and the SCP side
(what :mod:`.dispatch` runs for an incoming request).
"""
