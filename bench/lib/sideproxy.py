#!/usr/bin/env python3
"""A TCP forwarder standing in for a side database that fails after startup.

Usage: sideproxy.py LISTEN_PORT TARGET_PORT MODE   (MODE: refuse | hang)

It forwards to 127.0.0.1:TARGET_PORT (so pgcanary can load its catalog at startup) until it gets
SIGUSR1. Then, with refuse, it closes every connection and its listener (connections are refused);
with hang, it stops forwarding: open connections go silent and new ones are accepted and never
answered.
"""
import selectors
import signal
import socket
import sys

listen_port, target_port, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
failed = False


def fail(*_):
    global failed
    failed = True


signal.signal(signal.SIGUSR1, fail)
sel = selectors.DefaultSelector()
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", listen_port))
lst.listen(512)
sel.register(lst, selectors.EVENT_READ, None)
pairs = {}
held = []
switched = False
while True:
    if failed and not switched:
        switched = True
        for s in list(pairs):
            sel.unregister(s)
            if mode == "refuse":
                s.close()
            else:
                held.append(s)
        pairs.clear()
        if mode == "refuse":
            sel.unregister(lst)
            lst.close()
    for key, _ in sel.select(timeout=0.2):
        s = key.fileobj
        if s is lst:
            c, _ = lst.accept()
            if failed:
                held.append(c)
                continue
            u = socket.create_connection(("127.0.0.1", target_port))
            pairs[c], pairs[u] = u, c
            sel.register(c, selectors.EVENT_READ, None)
            sel.register(u, selectors.EVENT_READ, None)
            continue
        if s not in pairs:
            continue
        data = b""
        try:
            data = s.recv(65536)
        except OSError:
            pass
        peer = pairs[s]
        if not data:
            for x in (s, peer):
                sel.unregister(x)
                x.close()
                pairs.pop(x, None)
            continue
        peer.sendall(data)
