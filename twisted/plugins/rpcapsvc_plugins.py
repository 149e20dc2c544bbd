from twisted.application.service import ServiceMaker

rpcapd = ServiceMaker("rpcapd", "rpcapsvc.tap", "RPCAP remote capture daemon", "rpcapd")

rpcapcollect = ServiceMaker(
    "rpcapcollect", "rpcapsvc.collector.tap", "Collector for RPCAP daemons in active mode", "rpcapcollect"
)
