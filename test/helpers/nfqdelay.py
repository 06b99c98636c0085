#!/usr/bin/env python3
# Packet delay for test hosts on a kernel without sch_netem: an iptables NFQUEUE rule hands
# each packet to this process, which holds the kernel's verdict for DELAY_MS (plus up to
# JITTER_MS) and then accepts it, so the packets themselves wait in the kernel, acks and
# handshakes included. Raw nfnetlink (standard library only), so nothing need be installed.
# Usage: nfqdelay.py QUEUE DELAY_MS [JITTER_MS]; prints "ready" once bound; SIGTERM accepts
# every held packet and exits. Run inside the host's network namespace.
import heapq, random, select, signal, socket, struct, sys, time

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
QUEUE_PACKET, QUEUE_VERDICT, QUEUE_CONFIG = 0x300, 0x301, 0x302  # NFNL_SUBSYS_QUEUE << 8 | msg
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 1, 4, 2
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND, COPY_META, FAIL_OPEN = 1, 1, 1
PACKET_HDR, VERDICT_HDR, NF_ACCEPT = 1, 2, 1
MAX_HELD = 20000  # past this the kernel accepts packets at once (fail-open) rather than drop them


def attr(kind, payload):
    header = struct.pack('=HH', 4 + len(payload), kind)
    return header + payload + b'\0' * (-len(payload) % 4)


def message(kind, queue, attrs, flags=NLM_F_REQUEST):
    body = struct.pack('=BBH', socket.AF_UNSPEC, 0, socket.htons(queue)) + b''.join(attrs)
    return struct.pack('=IHHII', 16 + len(body), kind, flags, 0, 0) + body


def configure(sock, queue):
    sock.send(message(QUEUE_CONFIG, queue, [
        attr(CFG_CMD, struct.pack('!BxH', CMD_BIND, 0)),
        attr(CFG_PARAMS, struct.pack('!IB', 0, COPY_META)),
        attr(CFG_QUEUE_MAXLEN, struct.pack('!I', MAX_HELD)),
        attr(CFG_MASK, struct.pack('!I', FAIL_OPEN)),
        attr(CFG_FLAGS, struct.pack('!I', FAIL_OPEN)),
    ], NLM_F_REQUEST | NLM_F_ACK))
    for kind, payload in messages(sock.recv(65536)):
        if kind == NLMSG_ERROR and struct.unpack_from('=i', payload)[0] != 0:
            sys.exit('nfqdelay: binding queue %d failed: errno %d' % (queue, -struct.unpack_from('=i', payload)[0]))


def messages(data):
    """(type, payload) of each netlink message in one datagram."""
    at = 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from('=IH', data, at)
        if length < 16:
            return
        yield kind, data[at + 16:at + length]
        at += (length + 3) & ~3


def packet_id(payload):
    """The id in a queued packet's header attribute (after the 4-byte nfgenmsg)."""
    at = 4
    while at + 4 <= len(payload):
        length, kind = struct.unpack_from('=HH', payload, at)
        if length < 4:
            return None
        if kind & 0x3fff == PACKET_HDR:
            return struct.unpack_from('!I', payload, at + 4)[0]
        at += (length + 3) & ~3
    return None


def accept(sock, queue, ident):
    sock.send(message(QUEUE_VERDICT, queue, [attr(VERDICT_HDR, struct.pack('!II', NF_ACCEPT, ident))]))


def main():
    queue, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000
    jitter = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    configure(sock, queue)
    held = []  # heap of (due, seq, id): with jitter, packets may overtake each other, as on a real path
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print('ready', flush=True)
    seq = 0
    while not stopping:
        now = time.monotonic()
        while held and held[0][0] <= now:
            accept(sock, queue, heapq.heappop(held)[2])
        wait = max(0.0, held[0][0] - now) if held else 1.0
        try:
            readable, _, _ = select.select([sock], [], [], wait)
        except InterruptedError:
            continue
        if readable:
            for kind, payload in messages(sock.recv(1 << 20)):
                ident = packet_id(payload) if kind == QUEUE_PACKET else None
                if ident is not None:
                    seq += 1
                    heapq.heappush(held, (time.monotonic() + delay + random.uniform(0, jitter), seq, ident))
    for _, _, ident in held:
        accept(sock, queue, ident)


main()
