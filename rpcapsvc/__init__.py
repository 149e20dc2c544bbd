"""
rpcapsvc: an RPCAP (libpcap remote capture) daemon and collector on Twisted.
"""

__version__ = "0.1.0"
