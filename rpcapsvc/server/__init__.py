"""
The daemon's session logic: the per-session state machine (L{session}), the
control connection protocol and factory (L{control}) and the data channels
that carry packets to the client (L{datachannel}).
"""
