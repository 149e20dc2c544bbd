"""
The capture path: libpcap handles through pcapy-ng (L{system}), the reactor
reader that pulls packets off them in batches (L{reader}) and the interface
listing (L{interfaces}).
"""
