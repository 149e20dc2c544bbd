"""
The collector side of RPCAP: a client library that drives a daemon (passive:
we connect; active: it connects to us) and receives its packets over TCP,
classic UDP or udpstr (L{client}); capture files (L{files}); the
C{rpcap-dump} command (L{dump}) and the C{twistd rpcapcollect} service
(L{service}).
"""
