from twisted.application.service import ServiceMaker

rpcapd = ServiceMaker("rpcapd", "rpcapsvc.tap", "RPCAP remote capture daemon", "rpcapd")
